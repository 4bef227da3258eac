"""The dispatcher's view of each replica, and how it picks one for a request.

Both picks weigh the work a replica would save against the work it already has, in
tokens: prefill cost = prompt tokens it must compute (those past its cached prefix) + prompt
tokens already queued there; decode cost = prompt blocks it must receive (past its cached
prefix) + tokens it already holds. Sharing requests thus gather where their prefix is
(fewer tokens to compute or move; BatchLLM's grouping) until load outweighs the saving.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from cluster.messages import WorkerLoad
from kvstore.host_tier import HOST_WORKER


# Held KV weighs less than KV to move: it costs memory and attention reads, not compute or
# transfer, and a replica that runs out of room refuses the reservation anyway.
DECODE_LOAD_WEIGHT = 0.5


@dataclass
class Replica:
    worker_id: str
    role: str
    actor: object  # a Ray actor handle
    inflight: int = 0
    pending_tokens: int = 0   # prompt tokens sent here to prefill and not done yet
    claims: list[tuple[float, int]] = field(default_factory=list)  # (when, tokens) reserved here
    load: WorkerLoad | None = None

    def claim(self, tokens: int) -> None:
        self.claims.append((time.monotonic(), tokens))

    @property
    def claimed_tokens(self) -> int:
        """Tokens reserved here that the last reported load may not show yet."""
        return sum(tokens for _, tokens in self.claims)

    @property
    def free_blocks(self) -> int:
        return self.load.free_blocks if self.load is not None else 1 << 30

    @property
    def used_blocks(self) -> int:
        return self.load.total_blocks - self.load.free_blocks if self.load is not None else 0


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
        asked = time.monotonic()
        loads = await asyncio.gather(*(r.actor.load.remote() for r in replicas), return_exceptions=True)
        for r, load in zip(replicas, loads):
            if isinstance(load, WorkerLoad):
                r.load = load
                r.claims = [c for c in r.claims if c[0] >= asked]


@dataclass(frozen=True)
class RequestShape:
    """What a pick needs to know of a request: its prompt length and, per holder (a worker,
    or the host tier), how many of its leading blocks it has cached. A prefill replica may
    pull blocks from the host tier instead of computing them, at ``host_pull_weight`` of the
    cost of computing a token (measure both on your hardware: see BENCHMARKS.md)."""

    prompt_tokens: int
    block_size: int
    matched_blocks: dict[str, int] = field(default_factory=dict)
    host_pull_weight: float = 0.5

    def uncached(self, worker_id: str) -> int:
        return max(0, self.prompt_tokens - self.matched_blocks.get(worker_id, 0) * self.block_size)

    def host_pull(self, worker_id: str) -> int:
        """Blocks worth pulling from the host tier before prefilling on ``worker_id``."""
        extra = self.matched_blocks.get(HOST_WORKER, 0) - self.matched_blocks.get(worker_id, 0)
        return extra if extra > 0 and self.host_pull_weight < 1 else 0

    def prefill_cost(self, worker_id: str) -> float:
        pulled = self.host_pull(worker_id) * self.block_size
        return self.uncached(worker_id) - pulled + self.host_pull_weight * pulled


def pick_prefill(replicas: list[Replica], shape: RequestShape) -> Replica:
    return min(replicas, key=lambda r: (shape.prefill_cost(r.worker_id) + r.pending_tokens, r.inflight))


def pick_colocated(replicas: list[Replica], shape: RequestShape) -> Replica:
    """A colocated replica both prefills and decodes: the prefill cost plus its decode load."""
    return min(replicas, key=lambda r: (shape.prefill_cost(r.worker_id) + r.pending_tokens + DECODE_LOAD_WEIGHT * (
        r.used_blocks * shape.block_size + r.claimed_tokens), r.inflight))


def pick_decode(replicas: list[Replica], shape: RequestShape, exclude: set[str] = frozenset()) -> Replica | None:
    options = [r for r in replicas if r.worker_id not in exclude]
    if not options:
        return None
    return min(options, key=lambda r: (shape.uncached(r.worker_id) + DECODE_LOAD_WEIGHT * (
        r.used_blocks * shape.block_size + r.claimed_tokens), r.inflight))
