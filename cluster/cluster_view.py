"""What the dispatcher knows of the cluster, kept fresh in the background: each replica's
load (polled) and which prefixes each one holds (followed from the KV event stream)."""

from __future__ import annotations

import asyncio
import logging

from cluster.pool_handles import Pools, RequestShape
from cluster.prefix_index import PrefixIndex
from engine.block_hash import hash_blocks
from kvstore.kv_events import KVEventSubscriber

log = logging.getLogger(__name__)


class ClusterView:
    def __init__(self, pools: Pools, block_size: int, events: KVEventSubscriber | None,
                 load_interval_s: float = 0.25, host_pull_weight: float = 0.5):
        self.pools, self.block_size, self.events = pools, block_size, events
        self.host_pull_weight = host_pull_weight
        self.prefixes = PrefixIndex()
        self.load_interval_s = load_interval_s
        self._tasks: list[asyncio.Task] = []

    def shape(self, prompt: list[int], cache_salt: str | None) -> RequestShape:
        hashes = hash_blocks(prompt, self.block_size, (cache_salt or "").encode())
        return RequestShape(len(prompt), self.block_size, self.prefixes.matched_blocks(hashes),
                            self.host_pull_weight)

    def ensure_running(self) -> None:
        """Start the background tasks on the running loop (once, or again if they died)."""
        if self._tasks and not any(t.done() for t in self._tasks):
            return
        for t in self._tasks:
            t.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loads())]
        if self.events is not None:
            self._tasks.append(loop.create_task(self._follow_events()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def catch_up(self) -> None:
        """Apply every event published so far (tests and benchmarks use it to settle)."""
        if self.events is not None:
            while events := await asyncio.to_thread(self.events.read, 0):
                for event in events:
                    self.prefixes.apply(event)

    async def _poll_loads(self) -> None:
        while True:
            await self.pools.refresh()
            await asyncio.sleep(self.load_interval_s)

    async def _follow_events(self) -> None:
        while True:
            try:
                events = await asyncio.to_thread(self.events.read, 200)
            except Exception:  # noqa: BLE001 — Redis away: route without prefix knowledge, retry
                log.exception("reading KV events failed")
                await asyncio.sleep(1.0)
                continue
            for event in events:
                self.prefixes.apply(event)
