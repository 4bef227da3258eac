"""The search inside one design family: grow the pool the SLO violation points at (by x1.3, up
to x2 when the worst percentile is far over its bound), then shrink
each pool by bisection while the SLO holds (SLO attainment is close to monotone in pool sizes),
then trade replicas between pools where that is cheaper (the pool ratio: more prefill than decode,
or the reverse, whatever the SLO needs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from simulator.candidate import Candidate, Family
from simulator.slo import SLO
from simulator.traces.trace import Trace


class Limits(Protocol):
    max_replicas: int


class Planner(Protocol):
    """What a family search asks of the planner (planner.Planner)."""

    slo: SLO

    @property
    def options(self) -> Limits: ...

    def lower_bounds(self, fam: Family) -> tuple[int, ...]: ...

    def cost(self, fam: Family, sizes: tuple[int, ...]) -> float: ...

    def evaluate(self, fam: Family, sizes: tuple[int, ...], trace: Trace | None = None) -> Candidate: ...

    def passes(self, fam: Family, sizes: tuple[int, ...], trace: Trace | None = None) -> bool: ...

# which pools (by position) can fix a violated metric, per design kind
REMEDIES = {
    "colocated": {"ttft": (0,), "tbt": (0,), "tpot": (0,), "e2e": (0,), "rejected": ()},
    "disaggregated": {"ttft": (0,), "tbt": (1,), "tpot": (1,), "e2e": (0, 1), "rejected": ()},
    "offload": {"ttft": (0,), "tbt": (1, 2), "tpot": (1, 2), "e2e": (0, 1, 2), "rejected": (2,)},
}


def grow_options(planner: Planner, fam: Family, sizes: tuple[int, ...], cand: Candidate) -> list[tuple[int, ...]]:
    if cand.result.rejected:
        violated = {"rejected"}
    else:
        violated = {k.split("_")[0] for k, v in planner.slo.checked if not cand.result.percentiles[k] <= v}
    pools = sorted({i for metric in violated for i in REMEDIES[fam.kind][metric]})
    factor = min(2.0, max(1.3, math.sqrt(cand.badness))) if math.isfinite(cand.badness) else 1.3
    grown = []
    for i in pools:
        new = list(sizes)
        new[i] = max(sizes[i] + 1, math.ceil(sizes[i] * factor))
        grown.append(tuple(new))
    return [s for s in grown if max(s) <= planner.options.max_replicas]


def search_family(planner: Planner, fam: Family, budget: float | Callable[[float], bool], trace: Trace,
                  start: tuple[int, ...] | None = None) -> Candidate | None:
    """The cheapest design of the family that meets the SLO on ``trace`` and costs < budget, or None
    (``budget`` may be a test of a cost instead: whether it is within the budget)."""
    within = budget if callable(budget) else (lambda cost: cost < budget)
    floor = planner.lower_bounds(fam)
    sizes = start or floor
    if not within(planner.cost(fam, sizes)) or max(sizes) > planner.options.max_replicas:
        return None
    cand = planner.evaluate(fam, sizes, trace)
    history = [cand.badness]
    while not cand.passed:
        options = [s for s in grow_options(planner, fam, sizes, cand) if within(planner.cost(fam, s))]
        if not options or _stalled(history):
            return None
        tried = [(planner.evaluate(fam, s, trace), s) for s in options]
        cand, sizes = min(tried, key=lambda cs: (not cs[0].passed, cs[0].badness if not cs[0].passed else 0.0,
                                                 planner.cost(fam, cs[1])))
        history.append(cand.badness)
    return trade(planner, fam, shrink(planner, fam, list(sizes), floor, trace), trace)


def _stalled(history: list[float], rounds: int = 3) -> bool:
    """Growing stopped helping: the violation shrank by less than 3% over the last ``rounds`` grows
    (a floor no pool size moves, e.g. a step slower than the TBT bound under load)."""
    return len(history) > rounds and math.isfinite(history[-1]) and history[-1] > 0.97 * history[-1 - rounds]


def trade(planner: Planner, fam: Family, cand: Candidate, trace: Trace) -> Candidate:
    """Move one replica from a pool to another while that is cheaper and the SLO holds (pools on
    tiers of different prices), shrinking again after each move."""
    sizes = cand.sizes
    for _ in range(4):
        moves = []
        for i in range(len(sizes)):
            for j in range(len(sizes)):
                if i != j and sizes[j] > 1:
                    trial = list(sizes)
                    trial[i] += 1
                    trial[j] -= 1
                    if planner.cost(fam, tuple(trial)) < planner.cost(fam, sizes) and \
                            max(trial) <= planner.options.max_replicas:
                        moves.append(tuple(trial))
        passing = [m for m in moves if planner.passes(fam, m, trace)]
        if not passing:
            break
        best = min(passing, key=lambda m: planner.cost(fam, m))
        sizes = shrink(planner, fam, list(best), tuple(1 for _ in sizes), trace).sizes
    return planner.evaluate(fam, sizes, trace)


def shrink(planner: Planner, fam: Family, sizes: list[int], floor: tuple[int, ...], trace: Trace) -> Candidate:
    """Each pool by bisection down to ``floor`` while the SLO holds."""
    for i in range(len(sizes)):
        lo, hi = max(1, min(floor[i], sizes[i])), sizes[i]
        while lo < hi:
            mid = (lo + hi) // 2
            trial = tuple(sizes[:i] + [mid] + sizes[i + 1:])
            if planner.passes(fam, trial, trace):
                hi = mid
            else:
                lo = mid + 1
        sizes[i] = hi
    return planner.evaluate(fam, tuple(sizes), trace)
