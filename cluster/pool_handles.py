"""The dispatcher's view of each replica: its actor handle, requests in flight, last load."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cluster.messages import WorkerLoad


@dataclass
class Replica:
    worker_id: str
    role: str
    actor: object  # a Ray actor handle
    inflight: int = 0
    load: WorkerLoad | None = None

    @property
    def free_blocks(self) -> int:
        return self.load.free_blocks if self.load is not None else 1 << 30


@dataclass
class Pools:
    prefill: list[Replica] = field(default_factory=list)
    decode: list[Replica] = field(default_factory=list)
    colocated: list[Replica] = field(default_factory=list)

    @property
    def all(self) -> list[Replica]:
        return self.prefill + self.decode + self.colocated

    @property
    def disaggregated(self) -> bool:
        return bool(self.prefill)

    async def refresh(self) -> None:
        """Ask every replica for its load (queue depth, free blocks)."""
        replicas = self.all
        loads = await asyncio.gather(*(r.actor.load.remote() for r in replicas), return_exceptions=True)
        for r, load in zip(replicas, loads):
            if isinstance(load, WorkerLoad):
                r.load = load


def pick_prefill(replicas: list[Replica]) -> Replica:
    """Fewest requests in flight, then the shortest queue the replica last reported."""
    return min(replicas, key=lambda r: (r.inflight, r.load.waiting if r.load else 0))


def pick_decode(replicas: list[Replica], exclude: set[str] = frozenset()) -> Replica | None:
    """Most free blocks (after what this dispatcher has in flight there), then fewest running."""
    options = [r for r in replicas if r.worker_id not in exclude]
    if not options:
        return None
    return max(options, key=lambda r: (r.free_blocks - r.inflight, -(r.load.running if r.load else 0)))
