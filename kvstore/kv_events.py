"""KV events: workers announce blocks they stored or evicted, routers follow along.

Events go through one Redis stream per cluster (XADD, capped length); each router reads it
from the start (or where it left off, XREAD) and keeps its own prefix index. Events lost to
the cap only cost routing quality: a request routed without knowing of a cached prefix is
still computed exactly.

On the wire a block is its 64-bit *block id*: the first 8 bytes (little endian) of its
16-byte chained hash (engine/block_hash.py). The router only needs to tell prefixes apart,
and two of a million cached blocks share an id with probability ~3e-8; a collision costs
routing quality, never correctness (engines and the host tier keep the full hash). An event
is one msgpack array ``[worker, kind, tier, ids, parents]``: ``ids`` the block ids packed as
little-endian uint64 bytes, ``parents`` the same for each block's parent, or only the first
block's when each later block's parent is the block before it (a prompt's chain). Messages
from before the packed form (lists of 16-byte hashes) still decode.

Segment events (docs/segment_reuse.md) share the stream as kinds of their own,
``segment_stored`` / ``segment_evicted``: ``ids`` the segments' 64-bit ids (the first 8 bytes
of their salted hash, so tenants stay apart), ``parents`` each one's anchor count. The prefix
index never sees them: ``EventBatch`` keeps them apart, in stream order with the block events.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np
import redis

from engine.block_hash import BlockHash
from kvstore.keys import RedisKeys, Tier

BlockId = int
ID_DTYPE = np.dtype("<u8")


class EventKind(str, enum.Enum):
    STORED = "stored"      # hashes (with parents) now held by the worker
    EVICTED = "evicted"    # hashes the worker no longer holds
    CLEARED = "cleared"    # the worker holds nothing any more (restart, shutdown)


def block_ids(hashes: Sequence[BlockHash] | Sequence[int] | np.ndarray) -> np.ndarray:
    """The 64-bit block ids of ``hashes``: 16-byte chained hashes, ids already, or an id array."""
    if isinstance(hashes, np.ndarray):
        return hashes.astype(ID_DTYPE, copy=False)
    if not len(hashes):
        return np.zeros(0, ID_DTYPE)
    if isinstance(hashes[0], bytes):
        raw = np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), -1)
        return np.ascontiguousarray(raw[:, :8]).view(ID_DTYPE).ravel()
    return np.fromiter(hashes, ID_DTYPE, len(hashes))


def _pack(hashes: Sequence) -> bytes:
    return block_ids(hashes).tobytes()


@dataclass(frozen=True)
class KVEvent:
    """One worker's event. ``hashes`` and ``parents`` are block ids (ints) once decoded; an
    event made in-process may carry 16-byte hashes, encoded as their ids."""

    worker_id: str
    kind: EventKind
    tier: Tier = Tier.GPU
    hashes: tuple[BlockId | BlockHash, ...] = ()
    parents: tuple[BlockId | BlockHash, ...] = ()

    def encode(self) -> bytes:
        ids, parents = block_ids(self.hashes), block_ids(self.parents)
        chained = len(ids) > 0 and len(parents) == len(ids) and bool(np.all(parents[1:] == ids[:-1]))
        return msgpack.packb([self.worker_id, self.kind.value, self.tier.value, ids.tobytes(),
                              parents[:1].tobytes() if chained else parents.tobytes()], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> KVEvent:
        worker, kind, tier, ids, parents = _fields(data)
        if len(parents) == 1 and len(ids) > 1:
            parents = np.concatenate([parents, ids[:-1]])
        return cls(worker, EventKind(kind), Tier(tier), tuple(ids.tolist()), tuple(parents.tolist()))


def _fields(data: bytes) -> tuple[str, str, str, np.ndarray, np.ndarray]:
    worker, kind, tier, ids, parents = msgpack.unpackb(data, raw=False)
    if isinstance(ids, list):  # the form before packed ids: lists of 16-byte hashes
        return worker, kind, tier, block_ids(ids), block_ids(parents)
    return worker, kind, tier, np.frombuffer(ids, ID_DTYPE), np.frombuffer(parents, ID_DTYPE)


@dataclass(frozen=True)
class EventBatch:
    """Events decoded for batched application: per event (worker, kind, block count) and
    every event's block ids, concatenated in order. Parents are not decoded (a flat index
    over chained hashes needs none). Kinds this version does not know are skipped."""

    events: list[tuple[str, EventKind, int]]
    ids: np.ndarray
    position: bytes | str | None = None  # the stream id of the batch's last message, when read from one
    segments: tuple[SegmentEventBatch, ...] = ()  # segment events, kept out of ``events`` and ``ids``

    @classmethod
    def decode(cls, messages: Iterable[bytes], position: bytes | str | None = None) -> EventBatch:
        events, blobs, segments, unpack = [], [], [], msgpack.unpackb
        for data in messages:
            worker, kind, tier, ids, parents = unpack(data, raw=False)
            if kind in SEGMENT_KINDS:
                segments.append(SegmentEventBatch(len(events), worker, kind, np.frombuffer(ids, ID_DTYPE),
                                                  np.frombuffer(parents, ID_DTYPE)))
            if kind not in _KINDS:
                continue
            if isinstance(ids, list):
                ids = _pack(ids)
            events.append((worker, _KINDS[kind], len(ids) >> 3))
            blobs.append(ids)
        return cls(events, np.frombuffer(b"".join(blobs), ID_DTYPE), position, tuple(segments))

    @classmethod
    def of(cls, events: Iterable[KVEvent]) -> EventBatch:
        events = list(events)
        ids = [block_ids(e.hashes) for e in events]
        return cls([(e.worker_id, e.kind, len(i)) for e, i in zip(events, ids)],
                   np.concatenate(ids) if ids else np.zeros(0, ID_DTYPE))

    @property
    def num_blocks(self) -> int:
        return len(self.ids)


_KINDS = {k.value: k for k in EventKind}
SEGMENT_STORED, SEGMENT_EVICTED = "segment_stored", "segment_evicted"
SEGMENT_KINDS = (SEGMENT_STORED, SEGMENT_EVICTED)


@dataclass(frozen=True)
class SegmentEventBatch:
    """One segment event of a batch: ``at`` the number of block events before it there."""

    at: int
    worker_id: str
    kind: str
    ids: np.ndarray
    anchors: np.ndarray


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

    def segments(self, stored: Sequence[tuple[bytes, int]], evicted: Sequence[bytes]) -> None:
        """Segments (16-byte keys) now reusable here, with their anchor counts; segments gone."""
        for kind, keys, anchors in ((SEGMENT_STORED, [k for k, _ in stored], [n for _, n in stored]),
                                    (SEGMENT_EVICTED, evicted, [])):
            if keys:
                data = msgpack.packb([self.worker_id, kind, Tier.GPU.value, _pack(keys), _pack(anchors)],
                                     use_bin_type=True)
                self.client.xadd(self.stream, {b"e": data}, maxlen=self.max_len, approximate=True)

    def _add(self, event: KVEvent) -> None:
        self.client.xadd(self.stream, {b"e": event.encode()}, maxlen=self.max_len, approximate=True)


class KVEventSubscriber:
    """Reads the stream in order; ``read`` blocks up to ``block_ms`` for new events (0: returns
    at once). ``last_id`` is this reader's position: the id of the last entry it read."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, start: str = "0-0"):
        self.client, self.stream, self.last_id = client, keys.kv_events, start

    def read(self, block_ms: int = 100, count: int = 1000) -> list[KVEvent]:
        return [KVEvent.decode(data) for data in self.read_raw(block_ms, count)]

    def read_batch(self, block_ms: int = 100, count: int = 1000) -> EventBatch:
        """The next events as one batch (see EventBatch): what a router applies at once."""
        messages = self.read_raw(block_ms, count)
        return EventBatch.decode(messages, self.last_id if messages else None)

    def read_raw(self, block_ms: int = 100, count: int = 1000) -> list[bytes]:
        reply = self.client.xread({self.stream: self.last_id}, count=count, block=block_ms or None)
        messages = []
        for _, entries in reply or []:
            for _entry_id, fields in entries:
                messages.append(fields[b"e"])
            if entries:
                self.last_id = entries[-1][0]
        return messages
