"""Publishing an engine's block events (stored / evicted) to the cluster's event stream."""

from __future__ import annotations

import logging
import threading

from engine.async_engine import AsyncLLMEngine
from engine.block_pool import BlockEvents
from kvstore.kv_events import KVEventPublisher

log = logging.getLogger(__name__)


class KVEventPump:
    """A thread that drains the engine's block events every ``interval_s`` and publishes them,
    so that routers learn which prefixes this worker holds."""

    def __init__(self, engine: AsyncLLMEngine, publisher: KVEventPublisher, interval_s: float = 0.02):
        self.engine, self.publisher, self.interval_s = engine, publisher, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)

    def start(self) -> KVEventPump:
        self.publisher.cleared()  # whatever an earlier incarnation of this worker held is gone
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.publisher.cleared()

    def flush(self) -> None:
        events: BlockEvents = self.engine.call(lambda e: e.kv.pool.drain_events())
        if events:
            self.publisher.stored(events.stored)
            self.publisher.evicted(events.evicted)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 — a Redis hiccup costs routing quality, not the worker
                log.exception("publishing KV events failed")
