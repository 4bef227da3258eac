"""The dispatcher's view of each replica, and how it picks one for a request.

A pick prefers cache affinity while the pool is balanced and the least loaded replica when
it is not (the rule of SGLang's cache-aware router). Work and load are counted in tokens:
a prefill replica's work for a request is the prompt tokens past its cached prefix (pulling
from the host tier counts at ``host_pull_weight``), its load the prompt tokens queued there;
a decode replica's work is the prompt tokens it must receive, its load the tokens it holds.
Sharing requests thus gather where their prefix is (BatchLLM's grouping, and shared-prefix
batches for the decode kernel) until one replica runs ahead of the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cluster.messages import WorkerLoad
from kvstore.host_tier import HOST_WORKER


# Held KV weighs less than KV to move: it costs memory and attention reads, not compute or
# transfer, and a replica that runs out of room refuses the reservation anyway.
DECODE_LOAD_WEIGHT = 0.5
# The pool counts as imbalanced when the busiest replica's load exceeds the idlest's by this
# ratio plus this many tokens, or its requests in flight the idlest's by the ratio plus this
# many requests (cached prompts add little token load but still queue); then the least
# loaded replica is picked, cache or not.
IMBALANCE_RATIO = 1.5
IMBALANCE_SLACK_TOKENS = 16384
IMBALANCE_SLACK_REQUESTS = 8

R = TypeVar("R")


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
    hashes: tuple = ()  # the prompt's chained block hashes (empty where routing ignores prefixes)

    def uncached(self, worker_id: str) -> int:
        return max(0, self.prompt_tokens - self.matched_blocks.get(worker_id, 0) * self.block_size)

    def host_pull(self, worker_id: str) -> int:
        """Blocks worth pulling from the host tier before prefilling on ``worker_id``."""
        extra = self.matched_blocks.get(HOST_WORKER, 0) - self.matched_blocks.get(worker_id, 0)
        return extra if extra > 0 and self.host_pull_weight < 1 else 0

    def prefill_cost(self, worker_id: str) -> float:
        pulled = self.host_pull(worker_id) * self.block_size
        return self.uncached(worker_id) - pulled + self.host_pull_weight * pulled


def pick(replicas: Sequence[R], work: Callable[[R], float], load: Callable[[R], float],
         inflight: Callable[[R], int] = lambda r: r.inflight) -> R:
    """Least work (then load) while balanced; least load when imbalanced. Any replica type
    (the simulator's prediction of our router uses it on simulated replicas)."""
    loads = [load(r) for r in replicas]
    counts = [inflight(r) for r in replicas]
    order = range(len(replicas))
    if (max(loads) > IMBALANCE_RATIO * min(loads) + IMBALANCE_SLACK_TOKENS
            or max(counts) > IMBALANCE_RATIO * min(counts) + IMBALANCE_SLACK_REQUESTS):
        return replicas[min(order, key=lambda i: (counts[i], loads[i]))]
    return replicas[min(order, key=lambda i: (work(replicas[i]), loads[i], counts[i]))]


def pick_prefill(replicas: list[Replica], shape: RequestShape) -> Replica:
    return pick(replicas, lambda r: shape.prefill_cost(r.worker_id), lambda r: r.pending_tokens)


def pick_colocated(replicas: list[Replica], shape: RequestShape) -> Replica:
    """A colocated replica both prefills and decodes: prefill queue plus decode load."""
    return pick(replicas, lambda r: shape.prefill_cost(r.worker_id),
                lambda r: r.pending_tokens + DECODE_LOAD_WEIGHT * held_tokens(r, shape.block_size))


def pick_decode(replicas: list[Replica], shape: RequestShape, exclude: set[str] = frozenset()) -> Replica | None:
    options = [r for r in replicas if r.worker_id not in exclude]
    if not options:
        return None
    return pick(options, lambda r: shape.uncached(r.worker_id), lambda r: held_tokens(r, shape.block_size))


def held_tokens(r: Replica, block_size: int) -> int:
    """KV tokens a replica holds, with the reservations its last load report may not show."""
    return r.used_blocks * block_size + r.claimed_tokens
