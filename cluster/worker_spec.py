"""Everything a pool replica needs to build its engine and KV transport, in one message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import redis
import torch

from cluster.kv_event_pump import KVEventPump
from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from kvstore.config import KVStoreConfig, TransportConfig
from kvstore.handoff import KVHandoff
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventPublisher
from kvstore.pair_groups import PairGroups
from kvstore.redis_client import connect_redis
from kvstore.store import KVStore
from prefill_workers.host_prefix import HostPrefixCache, host_publisher


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


@dataclass
class WorkerParts:
    engine: AsyncLLMEngine
    handoff: KVHandoff | None
    redis: redis.Redis | None
    groups: PairGroups | None
    events: KVEventPump | None = None
    host_prefix: HostPrefixCache | None = None

    def close(self) -> None:
        if self.events is not None:
            self.events.stop()
        self.engine.shutdown()
        if self.groups is not None:
            self.groups.close_all()
        if self.redis is not None:
            self.redis.close()


def build_worker(spec: WorkerSpec, advertise_host: str | None = None) -> WorkerParts:
    """Load the model and connect the KV transport (through Redis) for this replica."""
    device = "cuda" if spec.use_gpu and torch.cuda.is_available() else spec.engine.device
    engine = AsyncLLMEngine(LLMEngine(dataclasses.replace(spec.engine, device=device)))
    if spec.kvstore is None:
        return WorkerParts(engine, None, None, None)
    client = connect_redis(spec.kvstore)
    # the cluster's choice (loopback for a local cluster) wins over the node IP the actor passes
    transport = dataclasses.replace(spec.transport, advertise_host=spec.transport.advertise_host or advertise_host)
    keys = RedisKeys(spec.kvstore.key_prefix)
    groups = PairGroups(spec.worker_id, client, keys, transport, device)
    events = KVEventPump(engine, KVEventPublisher(client, keys, spec.worker_id)).start()
    host_prefix = None
    if spec.role == "prefill" and spec.host_tier_writes:
        store = KVStore.connect(spec.kvstore)
        host_prefix = HostPrefixCache(engine, store.host, host_publisher(client, keys), spec.engine.model)
    return WorkerParts(engine, KVHandoff(groups, transport), client, groups, events, host_prefix)
