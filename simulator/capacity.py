"""The highest request rate a design serves within an SLO: the trace replayed faster until it fails.

Bracketing doubles (or halves) the rate scale, then bisection narrows it; the answer is the
fastest scale that met the SLO. SLO attainment is close to monotone in load, so bisection holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simulator.costs import CostModels
from simulator.design import Design
from simulator.metrics import SimResult
from simulator.run import verdict
from simulator.slo import SLO
from simulator.traces.trace import Trace


@dataclass(frozen=True)
class Capacity:
    design: Design
    scale: float              # rate scale that met the SLO (0 when none did)
    rate: float               # requests/s offered at that scale
    result: SimResult | None  # the run at that scale


def max_rate(design: Design, trace: Trace, costs: CostModels, slo: SLO, steps: int = 6,
             min_scale: float = 1 / 256, max_scale: float = 4096.0) -> Capacity:
    runs: dict[float, SimResult] = {}

    def meets(scale: float) -> bool:
        result = verdict(design, trace.scaled(scale), costs, slo)  # None: missed, stopped early
        if result is None:
            return False
        runs[scale] = result
        return result.meets(slo)

    scale = highest_scale(meets, steps, min_scale, max_scale)
    if scale == 0.0:
        return Capacity(design, 0.0, 0.0, None)
    return Capacity(design, scale, scale * trace.rate, runs[scale])


def highest_scale(meets: Callable[[float], bool], steps: int = 6, min_scale: float = 1 / 256,
                  max_scale: float = 4096.0) -> float:
    """The fastest rate scale found where ``meets(scale)`` (0.0 when none down to ``min_scale``):
    doubling or halving from 1 to bracket it, then ``steps`` bisections."""
    lo, hi = _bracket(meets, min_scale, max_scale)
    if lo == 0.0:
        return 0.0
    for _ in range(steps if hi is not None else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def _bracket(meets, min_scale: float, max_scale: float) -> tuple[float, float | None]:
    """(a scale that met the SLO or 0, the next one up that failed or None)."""
    if meets(1.0):
        scale = 1.0
        while scale < max_scale:
            if not meets(scale * 2):
                return scale, scale * 2
            scale *= 2
        return scale, None
    scale = 1.0
    while scale / 2 >= min_scale:
        if meets(scale / 2):
            return scale / 2, scale
        scale /= 2
    return 0.0, scale
