"""A model worker (decode replica) whose attention runs on an attention replica of the cluster.

``attach_engine`` builds its engine: it asks the attention replica (a Ray actor, found by name)
for its partition's size, forms the link (the replica's ``attach`` and this side's ``connect``
at the same time; Redis is used for the rendezvous only), and gives the runner a hook that does
the same again when the link breaks: a restarted attention replica is waited for, the engine
then recomputes every request (its KV went with the replica).
"""

from __future__ import annotations

import logging
import time

import ray
import redis

from attention_offload.link import Link, LinkEndpoint
from attention_offload.runner import offloaded_engine
from attention_offload.service import AttentionInfo
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from kvstore.config import TransportConfig
from kvstore.errors import KVStoreError
from kvstore.keys import RedisKeys
from workers.spec import OffloadSpec

log = logging.getLogger(__name__)


class AttentionPeer:
    """This model worker's side of the attachment to its attention replica."""

    def __init__(self, spec: OffloadSpec, worker_id: str, client: redis.Redis, keys: RedisKeys,
                 transport: TransportConfig, device: str):
        self.spec, self.worker_id = spec, worker_id
        self.endpoint = LinkEndpoint(worker_id, client, keys, transport, device)

    def actor(self):
        return ray.get_actor(self.spec.actor_name, namespace=self.spec.namespace)

    def info(self) -> AttentionInfo:
        return self._retrying(lambda: ray.get(self.actor().info.remote()), "asking for its cache size")

    def connect(self) -> Link:
        """A link to the attention replica, formed on both ends (retried while it restarts)."""
        def attach() -> Link:
            ref = self.actor().attach.remote(self.worker_id)
            link = self.endpoint.connect(self.spec.attention_id)
            ray.get(ref)
            return link
        return self._retrying(attach, "attaching")

    def _retrying(self, call, what: str):
        deadline, pause = time.monotonic() + self.spec.attach_timeout_s, 0.5
        while True:
            try:
                return call()
            except (ValueError, ray.exceptions.RayError, KVStoreError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("model worker %s: attention replica %s not ready (%s: %s); %s again in %.1f s",
                            self.worker_id, self.spec.attention_id, type(exc).__name__, exc, what, pause)
                time.sleep(pause)
                pause = min(2 * pause, 5.0)


def attach_engine(spec: OffloadSpec, worker_id: str, config: EngineConfig, client: redis.Redis, keys: RedisKeys,
                  transport: TransportConfig) -> LLMEngine:
    """The model worker's engine: weights here, attention and KV on ``spec``'s replica."""
    peer = AttentionPeer(spec, worker_id, client, keys, transport, spec.link_device)
    info = peer.info()
    if worker_id not in info.sessions:
        raise ValueError(f"attention replica {spec.attention_id} serves {info.sessions}, not {worker_id}")
    return offloaded_engine(config, peer.connect(), info.num_blocks, spec.micro_batches, reattach=peer.connect)
