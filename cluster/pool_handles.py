"""The dispatcher's view of each replica, and how it picks one for a request.

A pick prefers cache affinity while the pool is balanced and the least loaded replica when
it is not (the rule of SGLang's cache-aware router). Work and load are counted in tokens:
a prefill replica's work for a request is the prompt tokens past its cached prefix (pulling
from the host tier counts at ``host_pull_weight``), its load the prompt tokens queued there;
a decode replica's work is the prompt tokens it must receive, its load the tokens it holds.
Sharing requests thus gather where their prefix is (BatchLLM's grouping, and shared-prefix
batches for the decode kernel) until one replica runs ahead of the others.

Each replica also has a state, from its load pings and from the dispatcher's calls: ready,
degraded (its ping is slow: picked only when no replica of the pool is ready) or down (its
process died, its output stream broke, or no ping was answered for ``PING_DOWN_S``: never
picked, and its last load no longer counts). A ping answered again makes it ready; an
answer from a new incarnation (Ray restarted the actor) is reported to ``on_restart``. A
replica found hung is reported to ``on_hung`` (the dispatcher kills it, so that Ray
restarts it: a hung process would otherwise stay down for good).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from kvstore.keys import HOST_WORKER
from router.backend import HealthState
from workers.messages import WorkerLoad

if TYPE_CHECKING:
    from cluster.index.segment_index import RequestSegments

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

# A load ping unanswered this long makes a replica degraded, and this long down (hung). A
# ping waits for the engine thread between two steps, so a long step (a big prefill chunk
# on a loaded machine) also delays it: down is kept well above any step.
PING_SLOW_S = 2.0
PING_DOWN_S = 10.0

R = TypeVar("R")
log = logging.getLogger(__name__)
MIRRORED = frozenset({"inflight", "pending_tokens", "state", "load", "claims"})  # what a replica writes to its board


class Board(Protocol):
    """Arrays of a pool's loads and states that a replica keeps current (cluster/prefill_board.py)."""

    def write(self, slot: int, name: str, value: object) -> None: ...


@dataclass
class Replica:
    worker_id: str
    role: str
    actor: object  # a Ray actor handle
    inflight: int = 0
    pending_tokens: int = 0   # prompt tokens sent here to prefill and not done yet
    claims: list[tuple[float, int]] = field(default_factory=list)  # (when, tokens) reserved here
    load: WorkerLoad | None = None
    state: HealthState = HealthState.READY
    reason: str = ""               # why it is degraded or down
    incarnation: str = ""          # its process's, from its last load report
    ping: asyncio.Future | None = None
    ping_sent: float = 0.0
    killed: str | None = None      # the incarnation the dispatcher killed for Ray to restart
    board: Board | None = field(default=None, repr=False, compare=False)  # written on each change of MIRRORED
    slot: int = -1                 # this replica's entry on the board

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in MIRRORED and (board := self.__dict__.get("board")) is not None:
            board.write(self.slot, name, value)

    def mark_down(self, reason: str) -> None:
        """Stop routing here (its process died, or it stopped answering); one log line."""
        if self.state is not HealthState.DOWN:
            log.warning("replica %s is down: %s", self.worker_id, reason)
        self.state, self.reason = HealthState.DOWN, reason
        self.load, self.claims = None, []

    def answered(self, load: WorkerLoad, asked: float) -> bool:
        """A load report asked for at ``asked``; True when it comes from a new process."""
        restarted = bool(self.incarnation) and load.incarnation != self.incarnation
        if self.state is not HealthState.READY or restarted:
            log.warning("replica %s is ready%s", self.worker_id, " (restarted)" if restarted else " again")
        self.state, self.reason, self.incarnation = HealthState.READY, "", load.incarnation
        self.load = load
        self.claims = [c for c in self.claims if c[0] >= asked]
        return restarted

    def claim(self, tokens: int) -> None:
        self.claims = [*self.claims, (time.monotonic(), tokens)]  # assigned, so that its board sees it

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
    on_restart: Callable[[Replica], None] | None = None            # it answered from a new process
    on_error: Callable[[Replica, BaseException], None] | None = None  # its ping failed (it is down)
    on_hung: Callable[[Replica], None] | None = None                # no ping answered for PING_DOWN_S

    @property
    def all(self) -> list[Replica]:
        return self.prefill + self.decode + self.colocated

    @property
    def disaggregated(self) -> bool:
        return bool(self.prefill)

    async def refresh(self, wait_s: float = PING_SLOW_S) -> None:
        """Ping every replica that has no ping in flight for its load (queue depth, free
        blocks), wait up to ``wait_s`` for the answers, and update every replica's state."""
        loop = asyncio.get_running_loop()
        for r in self.all:
            if r.ping is not None and r.ping.get_loop() is not loop:  # left on a loop that is gone
                r.ping = None
            if r.ping is None:
                r.ping, r.ping_sent = asyncio.ensure_future(_awaited(r.actor.load.remote())), time.monotonic()  # type: ignore[attr-defined]
                r.ping.add_done_callback(lambda f, r=r: self._answered(r, f))  # type: ignore[misc]
        pending = [r.ping for r in self.all if r.ping is not None]
        if pending and wait_s > 0:
            await asyncio.wait(pending, timeout=wait_s)
        now = time.monotonic()
        for r in self.all:
            if r.ping is None or r.state is HealthState.DOWN:
                continue
            waited = now - r.ping_sent
            if waited > PING_DOWN_S:
                r.mark_down(f"no answer to a load ping for {waited:.0f} s (hung?)")
                if self.on_hung is not None:
                    self.on_hung(r)
            elif waited > PING_SLOW_S and r.state is HealthState.READY:
                r.state, r.reason = HealthState.DEGRADED, f"load ping unanswered for {waited:.1f} s"
                log.warning("replica %s is degraded: %s", r.worker_id, r.reason)

    def _answered(self, r: Replica, ping: asyncio.Future) -> None:
        r.ping = None
        if ping.cancelled():
            return
        if (error := ping.exception()) is not None:
            r.mark_down(first_line(error))
            if self.on_error is not None:
                self.on_error(r, error)
        elif r.answered(ping.result(), r.ping_sent) and self.on_restart is not None:
            self.on_restart(r)


async def _awaited(ref: Awaitable[WorkerLoad]) -> WorkerLoad:
    return await ref


def first_line(error: BaseException) -> str:
    """``TypeName: first line`` of an error: Ray's carry whole tracebacks, which logs need once
    and clients never."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def usable(replicas: Sequence[Replica], exclude: AbstractSet[str] = frozenset()) -> list[Replica]:
    """The replicas to pick from: the ready ones, else the degraded ones; never a down one."""
    options = [r for r in replicas if r.worker_id not in exclude and r.state is not HealthState.DOWN]
    return [r for r in options if r.state is HealthState.READY] or options


@dataclass(frozen=True)
class RequestShape:
    """What a pick needs to know of a request: its prompt length and, per holder (a worker,
    or the host tier), how many of its leading blocks it has cached. A prefill replica may
    pull blocks from the host tier instead of computing them, at ``host_pull_weight`` of the
    cost of computing a token (measure both on your hardware: see BENCHMARKS.md).
    ``segment_tokens``: per worker, prompt tokens past its cached prefix that it would fill
    from its segment store instead of computing (cluster/index/segment_index.py)."""

    prompt_tokens: int
    block_size: int
    matched_blocks: dict[str, int] = field(default_factory=dict)
    host_pull_weight: float = 0.5
    hashes: tuple = ()  # the prompt's chained block hashes (empty where routing ignores prefixes)
    segment_tokens: dict[str, int] = field(default_factory=dict)
    segments: RequestSegments | None = None  # the request's segments, when it names any

    def uncached(self, worker_id: str) -> int:
        return max(0, self.prompt_tokens - self.matched_blocks.get(worker_id, 0) * self.block_size)

    def host_pull(self, worker_id: str) -> int:
        """Blocks worth pulling from the host tier before prefilling on ``worker_id``."""
        extra = self.matched_blocks.get(HOST_WORKER, 0) - self.matched_blocks.get(worker_id, 0)
        return extra if extra > 0 and self.host_pull_weight < 1 else 0

    def prefill_cost(self, worker_id: str) -> float:
        pulled = self.host_pull(worker_id) * self.block_size
        return (self.uncached(worker_id) - pulled + self.host_pull_weight * pulled
                - self.segment_tokens.get(worker_id, 0))


def pick(replicas: Sequence[R], work: Callable[[R], float], load: Callable[[R], float],
         inflight: Callable[[R], int] = lambda r: r.inflight) -> R:  # type: ignore[attr-defined]
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


def pick_decode(replicas: list[Replica], shape: RequestShape,
                exclude: AbstractSet[str] = frozenset()) -> Replica | None:
    options = [r for r in replicas if r.worker_id not in exclude]
    if not options:
        return None
    return pick(options, lambda r: shape.uncached(r.worker_id), lambda r: held_tokens(r, shape.block_size))


def held_tokens(r: Replica, block_size: int) -> int:
    """KV tokens a replica holds, with the reservations its last load report may not show."""
    return r.used_blocks * block_size + r.claimed_tokens
