"""KV events: workers announce blocks they stored or evicted, routers follow along.

Events go through one Redis stream per cluster (XADD, capped length); each router reads it
from the start (or where it left off, XREAD) and keeps its own prefix index. Events lost to
the cap only cost routing quality: a request routed without knowing of a cached prefix is
still computed exactly.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import redis

from engine.block_hash import BlockHash
from kvstore.keys import RedisKeys, Tier


class EventKind(str, enum.Enum):
    STORED = "stored"      # hashes (with parents) now held by the worker
    EVICTED = "evicted"    # hashes the worker no longer holds
    CLEARED = "cleared"    # the worker holds nothing any more (restart, shutdown)


@dataclass(frozen=True)
class KVEvent:
    worker_id: str
    kind: EventKind
    tier: Tier = Tier.GPU
    hashes: tuple[BlockHash, ...] = ()
    parents: tuple[BlockHash, ...] = ()

    def encode(self) -> bytes:
        return msgpack.packb([self.worker_id, self.kind.value, self.tier.value, list(self.hashes),
                              list(self.parents)], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> KVEvent:
        worker, kind, tier, hashes, parents = msgpack.unpackb(data, raw=False)
        return cls(worker, EventKind(kind), Tier(tier), tuple(hashes), tuple(parents))


class KVEventPublisher:
    def __init__(self, client: redis.Redis, keys: RedisKeys, worker_id: str, max_len: int = 100_000):
        self.client, self.stream, self.worker_id, self.max_len = client, keys.kv_events, worker_id, max_len

    def stored(self, pairs: Sequence[tuple[BlockHash, BlockHash]], tier: Tier = Tier.GPU) -> None:
        if pairs:
            hashes, parents = zip(*pairs)
            self._add(KVEvent(self.worker_id, EventKind.STORED, tier, tuple(hashes), tuple(parents)))

    def evicted(self, hashes: Sequence[BlockHash], tier: Tier = Tier.GPU) -> None:
        if hashes:
            self._add(KVEvent(self.worker_id, EventKind.EVICTED, tier, tuple(hashes)))

    def cleared(self) -> None:
        self._add(KVEvent(self.worker_id, EventKind.CLEARED))

    def _add(self, event: KVEvent) -> None:
        self.client.xadd(self.stream, {b"e": event.encode()}, maxlen=self.max_len, approximate=True)


class KVEventSubscriber:
    """Reads the stream in order; ``read`` blocks up to ``block_ms`` for new events."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, start: str = "0-0"):
        self.client, self.stream, self.last_id = client, keys.kv_events, start

    def read(self, block_ms: int = 100, count: int = 1000) -> list[KVEvent]:
        reply = self.client.xread({self.stream: self.last_id}, count=count, block=block_ms)
        events = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                events.append(KVEvent.decode(fields[b"e"]))
        return events
