"""A router's prefix index kept in step with the cluster's KV event stream, and started from
a snapshot rather than the whole stream.

Every router reads every event: the stream is a broadcast that each router follows from its
own position (XREAD), not a work queue (a consumer group would split the events between
routers). Routers that applied the same events hold the same index, and the fleet router's
rule is deterministic, so they route a request alike.

The stream is capped (``KVEventPublisher.max_len``): a router that starts late could not
rebuild from it what the workers hold. So one router at a time (the holder of a lease that
it renews while it lives) writes a snapshot every ``snapshot_interval_s``: each worker's
held blocks and the stream position they reflect, one Redis value. A router that starts or
restarts loads the snapshot and reads the stream from that position: one GET and the events
since, whatever the fleet's size, and nothing asked of the workers (no resync storm). Had
the stream been trimmed past the position, the events in between are lost (routing quality
only: a worker's later events and its CLEARED on restart set things right); ``Restored.lost``
says so. Predictions are a router's own and are not in snapshots.

Applying events and exporting the index run on the thread that routes (the index is not
thread-safe); Redis calls and encoding can run on any other (``ClusterView`` splits them so).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import numpy as np
import redis

from cluster.index.compact_index import CompactPrefixIndex, HeldExport
from kvstore.kv_events import ID_DTYPE, EventBatch, EventKind, KVEventSubscriber

log = logging.getLogger(__name__)
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    position: str               # the last stream entry its blocks reflect
    added: int | None           # entries ever added to the stream up to the position (None: unknown)
    written_at: float           # unix time
    workers: dict[str, bytes]   # worker -> its held block ids (uint64)

    def encode(self) -> bytes:
        return msgpack.packb({"v": SNAPSHOT_VERSION, "position": self.position, "added": self.added,
                              "at": self.written_at, "workers": self.workers}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Snapshot | None:
        raw = msgpack.unpackb(data, raw=False)
        if not isinstance(raw, dict) or raw.get("v") != SNAPSHOT_VERSION:
            return None
        return cls(raw["position"], raw.get("added"), raw["at"], raw["workers"])

    @classmethod
    def of(cls, held: HeldExport, position: str, added: int | None) -> Snapshot:
        return cls(position, added, time.time(), {w: ids.tobytes() for w, ids in held.by_worker().items()})

    def batch(self) -> EventBatch:
        """The snapshot as STORED events, one per worker."""
        names = sorted(self.workers)
        return EventBatch([(w, EventKind.STORED, len(self.workers[w]) // 8) for w in names],
                          np.frombuffer(b"".join(self.workers[w] for w in names), ID_DTYPE), self.position)


@dataclass(frozen=True)
class Restored:
    blocks: int        # blocks in the index once loaded
    position: str      # the stream position it resumes from
    age_s: float       # how old the snapshot was
    lost: bool         # the stream no longer holds every event since the position


def stream_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = (value.decode() if isinstance(value, bytes) else value).partition("-")
    return int(ms), int(seq or 0)


class IndexFollower:
    def __init__(self, events: KVEventSubscriber, index: CompactPrefixIndex | None = None,
                 snapshot_interval_s: float = 30.0, router_id: str | None = None):
        self.events, self.client = events, events.client
        self.index = index if index is not None else CompactPrefixIndex()
        self.snapshot_key = f"{events.stream}:snapshot"
        self.lease_key = f"{events.stream}:snapshot-writer"
        self.router_id = router_id or uuid.uuid4().hex
        self.snapshot_interval_s = snapshot_interval_s
        self.position: str = _text(events.last_id)
        self.applied_events = self.applied_blocks = 0
        self._next_snapshot = time.monotonic() + snapshot_interval_s

    # -- on the index's thread ------------------------------------------------------------

    def apply(self, batch: EventBatch) -> None:
        self.index.apply_batch(batch)
        self.applied_events += len(batch.events)
        self.applied_blocks += batch.num_blocks
        if batch.position is not None:
            self.position = _text(batch.position)

    def load(self, snapshot: Snapshot, lost: bool = False) -> Restored:
        """Start from ``snapshot`` (an empty index, or one the snapshot's blocks may join)."""
        self.index.apply_batch(snapshot.batch())
        self.events.last_id = self.position = snapshot.position
        restored = Restored(len(self.index), snapshot.position, time.time() - snapshot.written_at, lost)
        log.info("prefix index restored from a snapshot: %d blocks, %.0f s old, resuming the event stream at %s%s",
                 restored.blocks, restored.age_s, restored.position,
                 " (events since were trimmed from the stream: some prefixes unknown until stored again)"
                 if lost else "")
        return restored

    def snapshot_due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._next_snapshot

    def export(self) -> tuple[HeldExport, str]:
        """The index's held blocks and the position they reflect (for ``write_snapshot``)."""
        self._next_snapshot = time.monotonic() + self.snapshot_interval_s
        return self.index.export_held(), self.position

    # -- any thread (Redis) -----------------------------------------------------------------

    def fetch_snapshot(self) -> tuple[Snapshot, bool] | None:
        """The newest snapshot, and whether the stream lost events since it; None if none."""
        data = self.client.get(self.snapshot_key)
        snapshot = Snapshot.decode(cast(bytes, data)) if data else None
        if snapshot is None:
            return None
        return snapshot, self._trimmed_past(snapshot)

    def _stream_info(self) -> dict | None:
        try:
            return self.client.xinfo_stream(self.events.stream)
        except redis.ResponseError:  # no stream (yet)
            return None

    def _trimmed_past(self, snapshot: Snapshot) -> bool:
        """Whether entries after the snapshot's position were trimmed from the stream: more
        entries were trimmed than had been added up to the position (Redis >= 7 counts them;
        older servers: the oldest entry left is later than the position, a guess)."""
        info = self._stream_info()
        if info is None:
            return False
        if snapshot.added is not None and "entries-added" in info:
            return info["entries-added"] - info["length"] > snapshot.added
        first: Any = info.get("first-entry")
        return bool(first) and stream_id(first[0]) > stream_id(snapshot.position)

    def _added_until(self, position: str) -> int | None:
        """Entries ever added to the stream up to ``position`` (None where Redis cannot say, or
        the position is far behind)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.events.stream)
        pipe.xrange(self.events.stream, min=f"({position}" if position != "0-0" else "-", count=10_001)
        try:
            info, after = pipe.execute()
        except redis.ResponseError:
            return 0 if position == "0-0" else None
        if "entries-added" not in info or len(after) > 10_000:
            return None
        return info["entries-added"] - len(after)

    def write_snapshot(self, held: HeldExport, position: str) -> bool:
        """Write a snapshot if this router holds (or takes) the writer's lease."""
        ttl_ms = max(1000, int(3000 * self.snapshot_interval_s))
        mine = self.client.set(self.lease_key, self.router_id, nx=True, px=ttl_ms)
        if not mine and self.client.get(self.lease_key) == self.router_id.encode():
            mine = self.client.pexpire(self.lease_key, ttl_ms)
        if mine:
            self.client.set(self.snapshot_key, Snapshot.of(held, position, self._added_until(position)).encode())
        return bool(mine)

    def save(self, held: HeldExport, position: str) -> bool:
        """``write_snapshot``, a failure logged (a snapshot missed costs a later router's start)."""
        try:
            return self.write_snapshot(held, position)
        except redis.RedisError as e:
            log.warning("writing the prefix index snapshot failed (%s: %s)", type(e).__name__, e)
            return False

    # -- one thread for all (tests, tools) --------------------------------------------------

    def restore(self) -> Restored | None:
        found = self.fetch_snapshot()
        return self.load(*found) if found is not None else None

    def poll(self, block_ms: int = 100, count: int = 1000) -> int:
        """Read and apply the next events; the number of blocks they carried."""
        batch = self.events.read_batch(block_ms, count)
        self.apply(batch)
        return batch.num_blocks

    def catch_up(self) -> None:
        while True:
            batch = self.events.read_batch(0)
            if not batch.events:
                return
            self.apply(batch)

    def tick(self) -> bool:
        """Write a snapshot if one is due (and this router holds the lease)."""
        return self.snapshot_due() and self.save(*self.export())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
