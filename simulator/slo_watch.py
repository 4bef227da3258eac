"""Stop a run as soon as it has missed its SLO for sure: the pass/fail questions of the planner
(shrinking, trading, capacity, the band's SLO limit) need no more of it.

Per-request metrics (ttft, tpot, e2e) are counted as requests finish, computed as metrics.py
computes them. np.percentile (linear) of n values is at least the value of rank floor(q (n - 1))
in ascending order, so once n - floor(q (n - 1)) values exceed a bound the percentile does too;
one more is asked for, against rounding in q (n - 1). A rejected request (too long for the design)
fails the SLO at once. Token gaps (tbt) are not watched: a run missing only a tbt bound runs to
its end (its implied tpot bound is watched).
"""

from __future__ import annotations

import math

from simulator.request import Request
from simulator.slo import PERCENTILES, SLO

WATCHED = ("ttft", "tpot", "e2e")


class SloMissed(Exception):
    """Raised out of a run: the SLO is missed whatever the rest of the trace does."""


class SloWatch:
    __slots__ = ("latency_s", "limits")

    def __init__(self, slo: SLO, requests: int, latency_s: float) -> None:
        self.latency_s = latency_s  # added to what clients see, as in metrics.summarize
        self.limits: list[list] = []  # [metric, bound, values over it still allowed before certain]
        for key, bound in slo.checked:
            metric, pct = key.split("_")
            if metric in WATCHED:
                q = PERCENTILES[pct] / 100
                self.limits.append([metric, bound, requests - math.floor(q * (requests - 1)) + 1])

    def finished(self, req: Request) -> None:
        """Count a finished request; raise SloMissed once a percentile is over its bound for sure."""
        latency = self.latency_s
        ttft = req.ttft_at - req.arrival + latency
        e2e = req.finish_at + latency - req.arrival
        tpot = (e2e - ttft) / (req.output - 1) if req.output > 1 else 0.0
        values = {"ttft": ttft, "tpot": tpot, "e2e": e2e}
        for limit in self.limits:
            if not values[limit[0]] <= limit[1]:
                limit[2] -= 1
                if limit[2] <= 0:
                    raise SloMissed(f"{limit[0]} over {limit[1]:g} s for too many requests")
