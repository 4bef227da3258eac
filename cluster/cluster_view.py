"""What the dispatcher knows of the cluster, kept fresh in the background: each replica's
load (polled) and which prefixes each one holds (followed from the KV event stream)."""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.config import POLICIES
from cluster.pool_handles import Pools, Replica, RequestShape, pick_colocated, pick_decode, pick_prefill
from cluster.prefix_index import PrefixIndex
from engine.block_hash import hash_blocks
from kvstore.kv_events import KVEventSubscriber

log = logging.getLogger(__name__)


class ClusterView:
    def __init__(self, pools: Pools, block_size: int, events: KVEventSubscriber | None,
                 load_interval_s: float = 0.25, host_pull_weight: float = 0.5, policy: str = "prefix-aware",
                 prediction_ttl_s: float = 30.0):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        self.pools, self.block_size, self.events = pools, block_size, events
        self.host_pull_weight, self.policy = host_pull_weight, policy
        self._turns: dict[str, int] = {}
        self.prefixes = PrefixIndex()
        self.load_interval_s = load_interval_s
        self.prediction_ttl_s = prediction_ttl_s
        self._tasks: list[asyncio.Task] = []

    def shape(self, prompt: list[int], cache_salt: str | None) -> RequestShape:
        if self.policy == "round-robin":
            return RequestShape(len(prompt), self.block_size, {}, 1.0)
        hashes = hash_blocks(prompt, self.block_size, (cache_salt or "").encode())
        self.prefixes.expire(time.monotonic())
        return RequestShape(len(prompt), self.block_size, self.prefixes.matched_blocks(hashes),
                            self.host_pull_weight, tuple(hashes))

    def routed(self, replica: Replica, shape: RequestShape) -> None:
        """``replica`` will compute (or receive) the request's prompt blocks: predict it holds them."""
        if shape.hashes:
            self.prefixes.predict(replica.worker_id, shape.hashes, time.monotonic() + self.prediction_ttl_s)

    def pick_prefill(self, replicas: list[Replica], shape: RequestShape) -> Replica:
        return self._next(replicas) if self.policy == "round-robin" else pick_prefill(replicas, shape)

    def pick_colocated(self, replicas: list[Replica], shape: RequestShape) -> Replica:
        return self._next(replicas) if self.policy == "round-robin" else pick_colocated(replicas, shape)

    def pick_decode(self, replicas: list[Replica], shape: RequestShape, exclude: set[str]) -> Replica | None:
        if self.policy == "round-robin":
            options = [r for r in replicas if r.worker_id not in exclude]
            return self._next(options) if options else None
        return pick_decode(replicas, shape, exclude)

    def _next(self, replicas: list[Replica]) -> Replica:
        """Round robin over a pool (keyed by its first replica)."""
        key = replicas[0].role
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return replicas[turn % len(replicas)]

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
