"""The search inside one design family: grow the pool the SLO violation points at, then shrink
each pool by bisection while the SLO holds (SLO attainment is close to monotone in pool sizes)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from simulator.traces.trace import Trace

if TYPE_CHECKING:
    from simulator.planner import Candidate, Family, Planner

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
    grown = []
    for i in pools:
        new = list(sizes)
        new[i] = max(sizes[i] + 1, math.ceil(sizes[i] * 1.3))
        grown.append(tuple(new))
    return [s for s in grown if max(s) <= planner.options.max_replicas]


def search_family(planner: Planner, fam: Family, budget: float, trace: Trace,
                  start: tuple[int, ...] | None = None) -> Candidate | None:
    """The cheapest design of the family that meets the SLO on ``trace`` and costs < budget, or None."""
    floor = planner.lower_bounds(fam)
    sizes = start or floor
    if planner.cost(fam, sizes) >= budget or max(sizes) > planner.options.max_replicas:
        return None
    cand = planner.evaluate(fam, sizes, trace)
    while not cand.passed:
        options = [s for s in grow_options(planner, fam, sizes, cand) if planner.cost(fam, s) < budget]
        if not options:
            return None
        tried = [(planner.evaluate(fam, s, trace), s) for s in options]
        cand, sizes = min(tried, key=lambda cs: (not cs[0].passed, cs[0].badness if not cs[0].passed else 0.0,
                                                 planner.cost(fam, cs[1])))
    return _shrink(planner, fam, list(sizes), floor, trace)


def _shrink(planner: Planner, fam: Family, sizes: list[int], floor: tuple[int, ...], trace: Trace) -> Candidate:
    for i in range(len(sizes)):
        lo, hi = min(floor[i], sizes[i]), sizes[i]
        while lo < hi:
            mid = (lo + hi) // 2
            trial = tuple(sizes[:i] + [mid] + sizes[i + 1:])
            if planner.evaluate(fam, trial, trace).passed:
                hi = mid
            else:
                lo = mid + 1
        sizes[i] = hi
    return planner.evaluate(fam, tuple(sizes), trace)
