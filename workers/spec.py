"""Everything a pool replica needs to build its engine and KV transport, in one message, and
the bring-up every role shares (``build_worker``); a role adds its own parts (the prefill
pool its host-tier prefix cache, an offloaded decode replica its attached engine)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis
import torch

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from kvstore.config import KVStoreConfig, TransportConfig
from kvstore.errors import RedisUnavailableError
from kvstore.handoff import KVHandoff
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventPublisher
from kvstore.pair_groups import PairGroups
from kvstore.redis_client import connect_redis
from kvstore.transport import HandoffTransport
from workers.kv_event_pump import KVEventPump

T = TypeVar("T")
log = logging.getLogger(__name__)
REDIS_WAIT_S = 120.0  # how long a starting replica waits for Redis (restarted with it, say)

# Ray options of every pool actor. Ray restarts a replica whose process dies, as often as it
# takes: its __init__ runs again (the model loads, the engine starts empty, the KV transport
# re-joins Redis and peers re-form their pair groups with it). Ray retries no call: a call in
# flight when the process died fails at once (the dispatcher marks the replica down and
# re-routes or answers 503), and replaying it on a new process that knows nothing of the
# request is never right; a load ping retried would even hide the death.
RESTART_OPTIONS = {"max_restarts": -1, "max_task_retries": 0}


@dataclass(frozen=True)
class OffloadSpec:
    """A model worker's attention replica: its worker id and Ray actor name, and how many
    micro-batches a step is split into. (The attention replica's own spec carries one too, for
    the link settings.)

    link_device: cuda when the model and attention workers both have GPUs (NCCL), else cpu
    (gloo; a GPU end stages through host memory). receive_kv: prefill workers hand prompts' KV
    to the attention replica (same kind of device); False: the model worker recomputes each
    prompt instead (a GPU prefill pool cannot hand KV to a CPU attention pool yet)."""

    attention_id: str
    actor_name: str
    namespace: str
    micro_batches: int = 2
    link_device: str = "cpu"
    receive_kv: bool = True
    attach_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.micro_batches <= 8:
            raise ValueError(f"micro_batches must be in 1..8, got {self.micro_batches}")


@dataclass(frozen=True)
class WorkerSpec:
    """A replica's identity and configuration. ``use_gpu`` picks cuda inside the replica
    (the driver that writes the spec may have no GPU)."""

    worker_id: str
    role: str
    engine: EngineConfig
    kvstore: KVStoreConfig | None
    transport: TransportConfig = TransportConfig()
    use_gpu: bool = False
    host_tier_writes: bool = True
    offload: OffloadSpec | None = None   # decode: attention and KV on this attention replica
    sessions: tuple[str, ...] = ()       # attention: the decode replicas it serves


@dataclass
class WorkerParts:
    engine: AsyncLLMEngine
    handoff: KVHandoff | None
    redis: redis.Redis | None
    groups: PairGroups | None
    events: KVEventPump | None = None

    def transport(self) -> HandoffTransport | None:
        """The KV handoff over this replica's own cache (None without a kvstore)."""
        return None if self.handoff is None else HandoffTransport(self.handoff, self.engine.kv_port.cache)

    def close(self) -> None:
        if self.events is not None:
            self.events.stop()
        self.engine.shutdown()
        if self.groups is not None:
            self.groups.close_all()
        if self.redis is not None:
            self.redis.close()


class AttachEngine(Protocol):
    """Builds an offloaded model worker's engine (attention_offload.model_side.attach_engine)."""

    def __call__(self, spec: OffloadSpec, worker_id: str, config: EngineConfig, client: redis.Redis,
                 keys: RedisKeys, transport: TransportConfig) -> LLMEngine: ...


def build_worker(spec: WorkerSpec, advertise_host: str | None = None,
                 attach: AttachEngine | None = None) -> WorkerParts:
    """Load the model and connect the KV transport (through Redis) for this replica; ``attach``
    builds the engine of a replica whose spec names an attention replica (``spec.offload``)."""
    device = "cuda" if spec.use_gpu and torch.cuda.is_available() else spec.engine.device
    config = dataclasses.replace(spec.engine, device=device)
    kvstore = spec.kvstore
    if kvstore is None:
        return WorkerParts(AsyncLLMEngine(LLMEngine(config)), None, None, None)
    client = until_redis_answers(lambda: connect_redis(kvstore), spec.worker_id)
    # the cluster's choice (loopback for a local cluster) wins over the node IP the actor passes
    transport = dataclasses.replace(spec.transport, advertise_host=spec.transport.advertise_host or advertise_host)
    keys = RedisKeys(kvstore.key_prefix)
    if spec.offload is not None:  # a model worker: the engine attaches to its attention replica
        if attach is None:
            raise ValueError(f"{spec.worker_id}: an offloaded replica needs an engine attach hook")
        engine = AsyncLLMEngine(attach(spec.offload, spec.worker_id, config, client, keys, transport))
    else:
        engine = AsyncLLMEngine(LLMEngine(config))
    groups = until_redis_answers(lambda: PairGroups(spec.worker_id, client, keys, transport, device), spec.worker_id)
    events = KVEventPump(engine.kv_port, KVEventPublisher(client, keys, spec.worker_id))
    until_redis_answers(events.start, spec.worker_id)
    return WorkerParts(engine, KVHandoff(groups, transport), client, groups, events)


def until_redis_answers(connect: Callable[[], T], worker_id: str, wait_s: float = REDIS_WAIT_S) -> T:
    """``connect()``, tried again with a growing pause while Redis does not answer, for up to
    ``wait_s``: a replica that Ray restarts while Redis is away (or restarting too) must not
    fail its __init__, since Ray does not restart an actor whose __init__ raised."""
    deadline, pause = time.monotonic() + wait_s, 0.25
    while True:
        try:
            return connect()
        except (redis.RedisError, RedisUnavailableError) as e:
            if time.monotonic() > deadline:
                raise
            log.warning("replica %s: Redis does not answer (%s); trying again in %.2g s", worker_id,
                        type(e).__name__, pause)
            time.sleep(pause)
            pause = min(2 * pause, 5.0)
