"""Shared-prefix (Hydragen-style) decode steps: what the running sequences of one decode batch share.

Requests name their prompt blocks by prefix-chained hashes (the trace's ``hash_ids``), so the
trace's prompts form a trie of blocks. As the engine does (engine/attention/shared_prefix/__init__.py), a
full prompt block held by c >= 2 running sequences is read once for all of them and attended as
one matrix product; everything else is attended per sequence as usual. Blocks no other request
of the trace holds are never shared, and a run of blocks held by the same requests of the trace
is held by the same running sequences too, so each request carries its shared runs
(``shared_segments``) and a batch counts members per run, not per block.

A run of blocks [start, end) with c members costs what extending a c-member shared prefix from
start to end blocks costs under the cost model (``shared_prefix_seconds``), so one group's runs
sum to the cost of its whole prefix. The batch keeps two sums, the context tokens its shared runs
cover (per member) and their seconds; a step then costs the plain step at a context that many
tokens shorter plus those seconds, which is the plain step at ``context - saved`` with ``saved =
tokens - seconds / per-token attention``. So a step is still affine in the context and runs of
steps keep their closed forms. When sharing would not be cheaper (``saved <= 0``) the step takes
the plain path, as the engine may choose.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.traces.trace import Trace

Segment = tuple[int, int, int]  # (hash of the run's first block, first block, end block)

# per cost model and block size: (members, start, end) -> seconds a run adds going from members - 1 to members
_RUN_DELTAS: WeakKeyDictionary = WeakKeyDictionary()
_SEGMENTS: WeakKeyDictionary = WeakKeyDictionary()  # per trace: shared_segments


def shared_segments(trace: Trace) -> tuple[tuple[Segment, ...], ...] | None:
    """Per request, the runs of its leading full prompt blocks that other requests of the trace
    also hold, split where the number of holders changes (None without hash_ids)."""
    if trace.hash_ids is None:
        return None
    cached = _SEGMENTS.get(trace)
    if cached is None:
        block = trace.block_tokens
        full = [ids[:p // block] for ids, p in zip(trace.hash_ids, trace.prompt_tokens.tolist())]
        holders: dict[int, int] = {}
        for ids in full:
            for h in ids:
                holders[h] = holders.get(h, 0) + 1
        cached = _SEGMENTS[trace] = tuple(_runs(ids, holders) for ids in full)
    return cached


def _runs(ids: tuple[int, ...], holders: dict[int, int]) -> tuple[Segment, ...]:
    runs, start, end = [], 0, 0
    while end < len(ids) and holders[ids[end]] > 1:
        if holders[ids[end]] != holders[ids[start]]:
            runs.append((ids[start], start, end))
            start = end
        end += 1
    if end > start:
        runs.append((ids[start], start, end))
    return tuple(runs)


class SharedPrefixes:
    """Member counts of the shared prompt runs that a decode batch's running sequences hold."""

    __slots__ = ("cost", "block", "counts", "tokens", "seconds", "deltas")

    def __init__(self, cost: IterationCost, block: int) -> None:
        self.cost, self.block = cost, block
        self.counts: dict[int, int] = {}  # run (its first block's hash) -> running sequences holding it
        self.tokens = 0                   # context tokens in runs with >= 2 members, counted per member
        self.seconds = 0.0                # those runs' shared-prefix seconds
        self.deltas: dict[Segment, float] = _RUN_DELTAS.setdefault(cost, {}).setdefault(block, {})

    def join(self, req: Request) -> None:
        counts = self.counts
        for key, start, end in req.shared_runs:
            c = counts.get(key, 0) + 1
            counts[key] = c
            if c > 1:
                n = (end - start) * self.block
                self.tokens += 2 * n if c == 2 else n
                self.seconds += self._delta(c, start, end)

    def leave(self, req: Request) -> None:
        counts = self.counts
        for key, start, end in req.shared_runs:
            c = counts[key]
            if c == 1:
                del counts[key]
                continue
            counts[key] = c - 1
            n = (end - start) * self.block
            self.tokens -= 2 * n if c == 2 else n
            self.seconds -= self._delta(c, start, end)
        if not self.tokens:
            self.seconds = 0.0  # no rounding drift left behind

    def saved(self, batch: int) -> float:
        """Context tokens a decode step of ``batch`` sequences saves by sharing (0: plain is no slower)."""
        if not self.tokens:
            return 0.0
        per_token = self.cost.decode_attention_per_token(batch)
        return max(0.0, self.tokens - self.seconds / per_token) if per_token > 0 else 0.0

    def _delta(self, members: int, start: int, end: int) -> float:
        delta = self.deltas.get((members, start, end))
        if delta is None:
            delta = self._run(members, start, end) - self._run(members - 1, start, end)
            self.deltas[(members, start, end)] = delta
        return delta

    def _run(self, members: int, start: int, end: int) -> float:
        if members < 2:
            return 0.0
        shared = self.cost.shared_prefix_seconds
        return max(0.0, shared(members, end * self.block) - shared(members, start * self.block))
