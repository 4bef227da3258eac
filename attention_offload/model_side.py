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
from collections.abc import Sequence

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
from kvstore.transport import Peer
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


class AttentionKVTransport:
    """``BlockTransport[Peer]`` of an offloaded model worker: its engine's block ids name blocks
    of its partition of the attention replica's cache, so a prompt's KV is received there
    (AttentionService.receive_kv, over that replica's KV handoff). It holds no KV to send."""

    def __init__(self, spec: OffloadSpec, worker_id: str):
        self.worker_id = worker_id
        self.attention = ray.get_actor(spec.actor_name, namespace=spec.namespace)

    async def send(self, block_ids: Sequence[int], to: Peer) -> int:
        raise RuntimeError(f"model worker {self.worker_id} holds no KV to send (its attention replica does)")

    async def receive(self, block_ids: Sequence[int], source: Peer) -> int:
        return await self.attention.receive_kv.remote(source.request_id, list(block_ids), source.worker_id,
                                                      self.worker_id)


def attach_engine(spec: OffloadSpec, worker_id: str, config: EngineConfig, client: redis.Redis, keys: RedisKeys,
                  transport: TransportConfig) -> LLMEngine:
    """The model worker's engine: weights here, attention and KV on ``spec``'s replica."""
    peer = AttentionPeer(spec, worker_id, client, keys, transport, spec.link_device)
    info = peer.info()
    if worker_id not in info.sessions:
        raise ValueError(f"attention replica {spec.attention_id} serves {info.sessions}, not {worker_id}")
    return offloaded_engine(config, peer.connect(), info.num_blocks, spec.micro_batches, reattach=peer.connect)
