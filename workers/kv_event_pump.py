"""Publishing an engine's block events (stored / evicted) and segment events (its segment
store's, docs/segment_reuse.md) to the cluster's event stream."""

from __future__ import annotations

import collections
import logging
import threading

import redis

from engine.block_pool import BlockEvents
from engine.kv_port import KVPort
from engine.segments.store import SegmentEvents
from kvstore.kv_events import KVEventPublisher

log = logging.getLogger(__name__)


class KVEventPump:
    """A thread that drains the engine's block events every ``interval_s`` and publishes them,
    so that routers learn which prefixes this worker holds.

    While Redis is unreachable the events wait in a bounded backlog (the oldest go first when
    it is full: routing quality, not correctness) and the pump retries with a growing pause;
    it logs one line when publishing stops and one when it resumes, not one per attempt.
    """

    def __init__(self, kv: KVPort, publisher: KVEventPublisher, interval_s: float = 0.02,
                 backlog: int = 10_000, max_backoff_s: float = 2.0):
        self.kv, self.publisher, self.interval_s = kv, publisher, interval_s
        self.max_backoff_s = max_backoff_s
        self.pending: collections.deque[BlockEvents | SegmentEvents] = collections.deque(maxlen=backlog)
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)

    def start(self) -> KVEventPump:
        self.publisher.cleared()  # whatever an earlier incarnation of this worker held is gone
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.publisher.cleared()
        except redis.RedisError:
            pass  # Redis is gone: routers stop trusting this worker's prefixes when it does

    def flush(self) -> None:
        """Drain the engine's events and publish them with whatever is waiting (raises on failure)."""
        self.pending.extend(self.kv.drain_events())
        while self.pending:
            batch = self.pending[0]
            if isinstance(batch, SegmentEvents):
                self.publisher.segments(batch.stored, batch.evicted)
            else:
                self.publisher.stored(batch.stored)
                self.publisher.evicted(batch.evicted)
            self.pending.popleft()

    def _run(self) -> None:
        pause = self.interval_s
        while not self._stop.wait(pause):
            waiting = len(self.pending)
            try:
                self.flush()
            except redis.RedisError as e:  # a Redis outage costs routing quality, not the worker
                if not self.failing:
                    log.warning("publishing KV events paused, Redis unreachable (%s: %s); retrying",
                                type(e).__name__, e)
                self.failing = True
                pause = min(max(2 * pause, 0.1), self.max_backoff_s)
                continue
            except Exception:  # noqa: BLE001 — the engine stopped or failed: its own error says why
                if not self.failing:
                    log.exception("publishing KV events failed; retrying")
                self.failing, pause = True, self.max_backoff_s
                continue
            if self.failing:
                log.warning("publishing KV events resumed (%d batches had waited)", waiting)
            self.failing, pause = False, self.interval_s

