"""Where an engine's steps spend their time, by kind of step (always on, a few counters).

Host phases are timed with ``time.perf_counter``: ``schedule``, ``prepare`` (input tensors),
``forward`` (queueing the model's kernels and the sampler's: on CUDA host time only, unless
the device's launch queue is full), ``wait`` (the host waiting for sampled tokens: in lockstep
for this step's, with overlapped scheduling for the previous step's, so a host-bound engine
shows little of it) and ``finish`` (stop checks, detokenizing, deltas). Until 2026-11-23
``forward`` included the wait. Each phase also gets the stepping thread's own CPU time
(``time.thread_time``): a host phase whose wall time far exceeds it was waiting — for the
GIL held by another thread of the process, or for a core. Kinds: ``graph`` (decode replayed
as a CUDA graph), ``decode`` (decode-only, run eagerly), ``shared`` (decode through a
shared-prefix plan, eagerly), ``shared graph`` (the same, replayed), ``mixed`` (any prefill rows).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

PHASES = ("schedule", "prepare", "forward", "wait", "finish")


@dataclass
class KindTotals:
    steps: int = 0
    tokens: int = 0
    seqs: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def as_dict(self) -> dict[str, object]:
        total = sum(self.seconds.values())
        return {"steps": self.steps, "tokens": self.tokens, "mean_batch": self.seqs / max(1, self.steps),
                "seconds": dict(self.seconds), "cpu_seconds": dict(self.cpu_seconds),
                "ms_per_step": 1e3 * total / max(1, self.steps)}


class StepProfile:
    """Totals per step kind; ``lap(phase)`` charges the time since the last lap to a phase."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindTotals] = defaultdict(KindTotals)
        self._last = (time.perf_counter(), time.thread_time())
        self._laps: dict[str, tuple[float, float]] = {}  # phase -> (wall, thread CPU) seconds

    def begin(self) -> None:
        self._laps = {}
        self._last = (time.perf_counter(), time.thread_time())

    def lap(self, phase: str) -> None:
        now = (time.perf_counter(), time.thread_time())
        wall, cpu = self._laps.get(phase, (0.0, 0.0))
        self._laps[phase] = (wall + now[0] - self._last[0], cpu + now[1] - self._last[1])
        self._last = now

    def end(self, kind: str, tokens: int, seqs: int, count: bool = True) -> None:
        """Charge the laps since ``begin`` to ``kind``; ``count`` False adds time but no step."""
        totals = self.kinds[kind]
        totals.steps += count
        totals.tokens += tokens
        totals.seqs += seqs
        for phase, (wall, cpu) in self._laps.items():
            totals.seconds[phase] += wall
            totals.cpu_seconds[phase] += cpu
        self._laps = {}

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {kind: totals.as_dict() for kind, totals in sorted(self.kinds.items())}

    def totals(self) -> dict[str, dict[str, float]]:
        """Flat running totals per kind (steps, tokens and seconds per phase), for metrics."""
        return {kind: {"steps": t.steps, "tokens": t.tokens, **t.seconds} for kind, t in self.kinds.items()}


def add_totals(parts: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The sum of several engines' ``totals()``."""
    out: dict[str, dict[str, float]] = {}
    for part in parts:
        for kind, values in part.items():
            mine = out.setdefault(kind, {})
            for name, value in values.items():
                mine[name] = mine.get(name, 0) + value
    return out


def step_kind(decode_only: bool, shared: bool, graphed: bool) -> str:
    if not decode_only:
        return "mixed graph" if graphed else "mixed"
    if shared:
        return "shared graph" if graphed else "shared"
    return "graph" if graphed else "decode"
