"""A replica's running decode batch (continuous batching) advanced in closed-form runs of steps.

The batch changes only when a sequence joins or finishes; between changes the steps form an
arithmetic series (step_curve), so there is one event per change, not per token. Each run is
recorded as a segment (batch, steps, first step seconds, growth per step) for TBT statistics.
With ``shared`` (shared_prefix.py), prompt blocks that running sequences share are attended once
per step: the steps run as if the context were ``saved`` tokens shorter (constant between changes).

With a ``memory`` (KV allocated on demand, as real engines do), the batch's context (every running
sequence's KV, the token each step writes included) may not exceed what the replica's reservations
leave of its capacity (``memory.kv_capacity - memory.kv_used``); a run stops
at the first boundary where the next step would not fit, and ``on_full(t)`` preempts there (the
replica calls ``preempt_last``: the most recently joined sequence leaves, as the engine preempts).

Opt in (``keep_request_gaps``): the batch also keeps its steps on a timeline by step number, and each
finishing request's 90th-percentile step time over the steps it was in (its p90 token gap, as
benchmarks/serve.py judges a request) goes to ``gap_p90[request index]``. It costs a pass over the
request's steps, so plain runs leave it off.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Protocol

import numpy as np

from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.shared_prefix import SharedPrefixes
from simulator.step_curve import ALL, piece_steps, run, series, solve, steps_to_reach

EPS_S = 1e-9  # boundaries closer than this to a target time count as reaching it


class KVMemory(Protocol):
    """The replica's KV memory, as the batch reads it (attributes: read on every run, hot)."""

    kv_capacity: int  # KV tokens the replica holds
    kv_used: int      # of them reserved outside the batch


class DecodeBatch:
    __slots__ = ("cost", "t", "k", "batch", "context", "finishes", "pieces", "segments", "busy_s",
                 "attention_s", "attention_per_token", "joined", "on_finish", "_seq", "shared", "saved",
                 "running", "memory", "on_full", "stall", "kv_token_s", "pieces_of", "timeline", "gap_p90")

    def __init__(self, cost: IterationCost, segments: list, on_finish: Callable[[Request, float], None],
                 shared: SharedPrefixes | None = None, memory: KVMemory | None = None,
                 on_full: Callable[[float], None] | None = None) -> None:
        self.cost, self.segments, self.on_finish, self.shared = cost, segments, on_finish, shared
        self.memory, self.on_full = memory, on_full
        self.running: dict[int, Request] = {}  # by join order (the last is the first preempted)
        self.stall = 0.0    # engine seconds (per-request serving work) before the next step
        self.saved = 0.0    # context tokens shared-prefix steps do not pay for (decode-only steps)
        self.t = 0.0        # start of step k (a boundary)
        self.k = 0
        self.batch = 0      # sequences running
        self.context = 0    # their contexts summed, for step k
        self.finishes: list[tuple[int, int, Request]] = []  # (step count at which it is done, seq, request)
        self.pieces_of = cost.decode_pieces
        self.pieces = cost.decode_pieces(1)
        self.busy_s = 0.0
        self.attention_s = 0.0
        self.kv_token_s = 0.0  # running sequences' KV (context tokens) integrated over time: KV memory use
        self.attention_per_token = cost.attention_seconds_per_token()
        self.joined: list[Request] = []  # joined at this boundary, first decode token not yet timed
        self._seq = 0
        self.timeline: list[tuple[int, int, float, float]] | None = None  # (first step, steps, first s, growth)
        self.gap_p90: dict[int, float] | None = None

    def keep_request_gaps(self, out: dict[int, float]) -> None:
        """From now on, each finishing request's p90 step time over its steps here goes to ``out``."""
        self.timeline, self.gap_p90 = [], out

    def shift_gap(self, batch: int, previous: float, shift: float, seconds: float) -> None:
        """The outside step just taken (``seconds``, ``batch`` sequences) shows ``shift`` of its time in
        the gap before it, a step of ``previous`` seconds (overlap.py's launch shift): on the segments, a
        segment of negative batch takes those tokens out of the gaps at ``previous`` and they come back
        at ``previous + shift``; on the timeline (where kept), the two steps' times change."""
        segments = self.segments
        segments[-1] = (batch, 1, seconds - shift, 0.0)
        segments.append((-batch, 1, previous, 0.0))
        segments.append((batch, 1, previous + shift, 0.0))
        timeline = self.timeline
        if timeline is None or len(timeline) < 2:
            return
        k, _, _, _ = timeline[-1]
        timeline[-1] = (k, 1, seconds - shift, 0.0)
        k0, m, first, growth = timeline[-2]
        if k0 + m != k:
            return
        before = [(k0, m - 1, first, growth)] if m > 1 else []
        timeline[-2:-1] = [*before, (k - 1, 1, previous + shift, 0.0)]

    def _on_timeline(self, since: int, k: int) -> None:
        """The steps this batch appended to the segments from index ``since`` on, from step ``k``."""
        timeline = self.timeline
        for b, m, first, growth in self.segments[since:]:
            if b > 0:
                timeline.append((k, m, first, growth))
                k += m

    def _request_gap_p90(self, req: Request) -> float:
        """The 90th percentile of the step times from ``req``'s join to now (as serve.py takes it)."""
        values: list[float] = []
        start, end = req.k_join, self.k
        for k, m, first, growth in reversed(self.timeline):
            if k + m <= start:
                break
            lo, hi = max(k, start) - k, min(k + m, end) - k
            values.extend(first + growth * j for j in range(lo, hi))
        return float(np.percentile(values, 90)) if values else float("nan")

    def join(self, req: Request, resumed: bool = False) -> None:
        """Add a prefilled request at the current boundary (it has ``generated`` tokens and needs the
        rest). ``resumed``: back from a preemption's recompute, whose token was timed already."""
        k = req.k_join = self.k
        seq = self._seq = self._seq + 1
        req.batch_seq = seq
        self.running[seq] = req
        heappush(self.finishes, (k + req.output - req.generated, seq, req))
        batch = self.batch = self.batch + 1
        self.context += req.prompt + req.generated
        self.pieces = self.pieces_of(batch)
        if not resumed:
            self.joined.append(req)
        if self.shared is not None:
            if req.shared_runs:
                self.shared.join(req)
            self.saved = self.shared.saved(self.batch)

    def limit(self) -> float:
        """KV tokens the batch's context may reach (unbounded without a memory)."""
        memory = self.memory
        return float("inf") if memory is None else memory.kv_capacity - memory.kv_used

    def fitting_steps(self) -> int:
        """Steps that fit the memory limit from this boundary (each adds ``batch`` tokens)."""
        memory = self.memory
        if memory is None:
            return 1 << 62
        room = memory.kv_capacity - memory.kv_used - self.context
        return room // self.batch + 1 if room >= 0 else 0

    def next_change(self) -> float:
        """When the next sequence finishes (or memory runs out), if nothing joins before.
        (Hot: fitting_steps, and step_curve.run for one piece, inlined.)"""
        steps = self.finishes[0][0] - self.k
        memory = self.memory
        if memory is not None:
            room = memory.kv_capacity - memory.kv_used - self.context
            fit = room // self.batch + 1 if room >= 0 else 0
            if fit < steps:
                steps = fit
        pieces, context = self.pieces, self.context - self.saved
        if len(pieces) == 1:
            _, a, b = pieces[0]
        else:
            a, b, on_piece = piece_steps(pieces, self.batch, context)
            if steps > on_piece:
                return self.t + self.stall + run(pieces, self.batch, context, steps)
        d0, delta = a + b * context, b * self.batch
        x = float(steps)  # step_curve: float(m) * d0 is m * d0, cheaper
        return self.t + self.stall + (x * d0 + delta * x * (x - 1.0) / 2.0)

    def advance_to(self, target: float) -> None:
        """Run to the first boundary at or after ``target``, finishing sequences on the way (and
        preempting where the next step would not fit). (Hot: fitting_steps, and steps_to_reach
        for one piece, inlined.)"""
        memory, stop = self.memory, target - EPS_S
        fit = 1 << 62
        while self.batch:
            if memory is not None:
                room = memory.kv_capacity - memory.kv_used - self.context
                if room < 0:
                    self.on_full(self.t)
                    continue
                fit = room // self.batch + 1
            t = self.t
            if t >= stop:
                break
            left = self.finishes[0][0] - self.k
            dt = target - t - self.stall
            if dt <= EPS_S:
                dt = EPS_S
            pieces, context = self.pieces, self.context - self.saved
            if len(pieces) == 1:
                _, a, b = pieces[0]
                on_piece = ALL
            else:
                a, b, on_piece = piece_steps(pieces, self.batch, context)
            d0, delta = a + b * context, b * self.batch
            if on_piece == ALL or series(d0, delta, float(on_piece)) >= dt:  # steps_to_reach's first test
                m = solve(d0, delta, dt)
            else:
                m = steps_to_reach(pieces, self.batch, context, dt)
            if m > fit:
                m = fit
            if m >= left:
                self._run(left, d0, delta, on_piece)
                self._finish_due()
            else:
                self._run(m, d0, delta, on_piece)
                if m < fit and self.t >= stop:
                    break  # done (the memory check would pass: the run left room >= 0)
        if not self.batch and self.t < target:
            stall = self.stall - (target - self.t)  # the work went on while idle
            self.stall = stall if stall > 0.0 else 0.0
            self.t = target

    def take_stall(self) -> float:
        """The pending serving work, for an iteration timed from outside (it is in that step's gap)."""
        stall, self.stall = self.stall, 0.0
        return stall

    def make_room(self) -> None:
        """Preempt at this boundary until the next step fits (before a step timed from outside)."""
        while self.batch and self.fitting_steps() == 0:
            self.on_full(self.t)

    def preempt_last(self) -> Request:
        """Take the most recently joined sequence out of the batch (its KV is freed); its
        ``generated`` counts the tokens it made, ``last_token_at`` when the last one came."""
        seq, req = self.running.popitem()
        done = self.k - req.k_join
        if done:
            req.last_token_at = self.t
        elif req in self.joined:  # never stepped since it joined: its first decode token is not timed
            self.joined.remove(req)
        self.batch -= 1
        self.context -= req.prompt + req.generated + done
        req.generated += done
        req.batch_seq = -1
        if self.shared is not None and req.shared_runs:
            self.shared.leave(req)
        finishes = self.finishes
        while finishes and finishes[0][2].batch_seq != finishes[0][1]:
            heappop(finishes)  # entries of preempted sequences
        if self.batch:
            self.pieces = self.pieces_of(self.batch)
        if self.shared is not None:
            self.saved = self.shared.saved(self.batch)
        return req

    def step(self, seconds: float) -> None:
        """One step timed from outside (a mixed prefill + decode iteration: no shared-prefix path)."""
        if not self.batch:
            self.t += seconds
            return
        self.segments.append((self.batch, 1, seconds, 0.0))
        if self.timeline is not None:
            self.timeline.append((self.k, 1, seconds, 0.0))
        if self.joined:
            self._time_joined(seconds)
        self.attention_s += self.attention_per_token * self.context
        self.kv_token_s += self.context * seconds
        self.t += seconds
        self.context += self.batch
        self.k += 1
        if self.finishes[0][0] == self.k:  # _finish_due's test (hot: most steps finish no one)
            self._finish_due()

    def _run(self, m: int, first: float, delta: float, on_piece: int) -> None:
        """m steps from this boundary; ``first`` + j * ``delta`` is step j's time on the cost piece that
        holds the context, where ``on_piece`` steps start (step_curve.piece_steps; advance_to has them)."""
        segments, context, b, pieces = self.segments, self.context - self.saved, self.batch, self.pieces
        since = len(segments)
        x = float(m)  # step_curve: float(m) * d0 is m * d0, cheaper
        if self.stall:  # the first step's gap holds the pending serving work
            first = run(pieces, b, context, 1) + self.stall
            self.stall = 0.0
            segments.append((b, 1, first, 0.0))
            seconds = first
            if m > 1:
                seconds += run(pieces, b, context + b, m - 1, segments)
        elif m <= on_piece:  # step_curve.run inlined (hot)
            segments.append((b, m, first, delta))
            seconds = x * first + delta * x * (x - 1.0) / 2.0
        else:
            seconds = run(pieces, b, context, m, segments)
            first = -1.0
        if self.joined:  # their first decode token comes at the end of the run's first step
            if first < 0.0:
                first = run(pieces, b, context, 1)
            self._time_joined(first)
        self.attention_s += self.attention_per_token * (x * context + b * m * (m - 1) / 2)
        self.kv_token_s += (self.context + b * (m - 1) / 2) * seconds  # the run's mean context (steps ~equal)
        if self.timeline is not None:
            self._on_timeline(since, self.k)
        self.t += seconds
        self.busy_s += seconds
        self.context += m * b
        self.k += m

    def _time_joined(self, first_step_s: float) -> None:
        for req in self.joined:
            req.first_decode_at = self.t + first_step_s
            req.first_step_s = first_step_s
        self.joined.clear()

    def _finish_due(self) -> None:
        finishes, k = self.finishes, self.k
        if not finishes or finishes[0][0] != k:
            return  # nothing due: the batch is as it was
        running, shared, on_finish = self.running, self.shared, self.on_finish
        while finishes and finishes[0][0] == k:
            _, seq, req = heappop(finishes)
            if req.batch_seq != seq:
                continue  # preempted
            del running[seq]
            if self.gap_p90 is not None:
                self.gap_p90[req.index] = self._request_gap_p90(req)
            req.batch_seq = -1
            req.generated = req.output
            self.batch -= 1
            self.context -= req.prompt + req.output
            if shared is not None and req.shared_runs:
                shared.leave(req)
            on_finish(req, self.t)
        while finishes and finishes[0][2].batch_seq != finishes[0][1]:
            heappop(finishes)
        if self.batch:
            self.pieces = self.pieces_of(self.batch)
        if shared is not None:
            self.saved = shared.saved(self.batch)
