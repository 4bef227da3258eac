"""Uncertainty bands: the simulation under a slowdown factor drawn from what calibration leaves open.

Capacity is a cliff: a design that keeps up at 1.5x the modeled step time may queue without bound at
2x. So a prediction is a band: every iteration time (and per-request serving cost) is multiplied by a
slowdown ``s`` with a lognormal prior, and the metrics at the prior's 10th / 50th / 90th percentiles of
``s`` are the band (latencies grow and goodput falls with ``s``, so those are the metrics' percentiles
too). P(SLO met) is the prior's probability of the slowdowns under which the SLO holds: the largest
such ``s`` is found by bisection (meeting the SLO is close to monotone in ``s``).

Priors: calibrated, median 1 and a sigma from the profiles' own leave-one-out residuals (each measured
point predicted from the others); uncalibrated, ``UNCALIBRATED`` (docs/simulator.md: how far measured
engines have been from the roofline).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist

from simulator.costs import CostModels
from simulator.design import Design
from simulator.metrics import SimResult
from simulator.operators import decode_work, prefill_work
from simulator.run import simulate, verdict
from simulator.slo import SLO
from simulator.traces.trace import Trace

BAND = (0.1, 0.5, 0.9)
MIN_CALIBRATED_SIGMA = 0.03  # run-to-run spread of a measured step, where residuals say less


@dataclass(frozen=True)
class SlowdownPrior:
    """Lognormal slowdown of every modeled time: median ``median``, log-sd ``sigma``."""

    median: float
    sigma: float
    source: str

    def quantile(self, q: float) -> float:
        return self.median * math.exp(self.sigma * NormalDist().inv_cdf(q)) if self.sigma else self.median

    def cdf(self, slowdown: float) -> float:
        if self.sigma == 0:
            return float(slowdown >= self.median)
        return NormalDist().cdf(math.log(slowdown / self.median) / self.sigma)


# Our 16 measured profile points against the shipped roofline (H100 and H200 decode steps, H200 prefill,
# Llama-3-8B): measured / roofline median 1.17, geometric mean 1.48, log-sd 0.43 (prefills of 128-512
# tokens 2.2-4.6x: the eager prefill step's ~20 ms floor); published A100/H100 serving results of other
# engines sit 1.6x or more above it (issue 17). Median 1.3, sigma 0.4: p10 0.78x, p90 2.17x.
UNCALIBRATED = SlowdownPrior(1.3, 0.4, "uncalibrated: roofline x lognormal(median 1.3, sigma 0.4) from our "
                             "16 profile points and published serving results (docs/simulator.md)")


def calibrated_prior(costs: CostModels) -> SlowdownPrior:
    """Median 1; sigma from leave-one-out: each decode-step and prefill point predicted by a profile
    without it (the RMS log error), at least MIN_CALIBRATED_SIGMA."""
    from simulator.calibration import CalibratedCost
    from simulator.roofline import RooflineCost
    errors = []
    for (hw, tp), profile in costs.profiles.items():
        roof = RooflineCost(costs.model, costs.catalog[hw], tp)
        points = [m for m in profile.measurements if m.op in ("decode_step", "prefill")]
        for m in points:
            rest = tuple(p for j, p in enumerate(profile.measurements) if p is not m)
            if not any(p.op == m.op for p in rest):
                continue
            cost = CalibratedCost(roof, type(profile)(hw, tp, profile.model, rest, ()))
            work = decode_work(m.batch, m.batch * m.context) if m.op == "decode_step" else \
                prefill_work(m.tokens, m.context, 1)
            errors.append(math.log(m.seconds / cost.seconds(work)) if m.op == "prefill" else
                          math.log(m.seconds / _decode_seconds(cost, m.batch, m.batch * m.context)))
    sigma = math.sqrt(statistics.fmean(e * e for e in errors)) if errors else 0.0
    return SlowdownPrior(1.0, max(sigma, MIN_CALIBRATED_SIGMA),
                         f"calibrated: lognormal(median 1, sigma {max(sigma, MIN_CALIBRATED_SIGMA):.3f}) from "
                         f"{len(errors)} leave-one-out profile residuals")


def _decode_seconds(cost, batch: int, context: int) -> float:
    _, a, b = cost.decode_pieces(batch)[0]
    return a + b * context


def prior_for(costs: CostModels) -> SlowdownPrior:
    return calibrated_prior(costs) if costs.calibrated else UNCALIBRATED


@dataclass(frozen=True)
class Band:
    """A design's results at the prior's BAND quantiles of the slowdown, and P(SLO met)."""

    prior: SlowdownPrior
    slowdowns: tuple[float, ...]
    results: tuple[SimResult, ...]       # at slowdowns (low, mid, high)
    p_slo: float | None                  # None without an SLO
    slo_limit: float | None              # the largest slowdown under which the SLO held

    @property
    def mid(self) -> SimResult:
        return self.results[len(self.results) // 2]

    def metric(self, key: str) -> tuple[float, ...]:
        """The metric at each band slowdown (percentile keys like ttft_p99, or a SimResult field)."""
        return tuple(r.percentiles[key] if key in r.percentiles else getattr(r, key) for r in self.results)


def band(design: Design, trace: Trace, costs: CostModels, slo: SLO | None = None,
         prior: SlowdownPrior | None = None, quantiles: tuple[float, ...] = BAND, steps: int = 6) -> Band:
    prior = prior or prior_for(costs)
    slowdowns = tuple(prior.quantile(q) for q in quantiles)
    results = tuple(simulate(design, trace, costs.slowed(s), slo) for s in slowdowns)
    if slo is None:
        return Band(prior, slowdowns, results, None, None)
    limit = slo_limit(design, trace, costs, slo, prior, dict(zip(slowdowns, results)), steps)
    return Band(prior, slowdowns, results, prior.cdf(limit) if limit else 0.0, limit)


def slo_limit(design: Design, trace: Trace, costs: CostModels, slo: SLO, prior: SlowdownPrior,
              known: dict[float, SimResult] | None = None, steps: int = 6) -> float | None:
    """The largest slowdown (within the prior's 0.5th-99.5th percentiles) under which the SLO holds,
    by bisection in log(s); None when it fails even at the low end."""
    passed = {s: r.meets(slo) for s, r in (known or {}).items()}

    def meets(s: float) -> bool:
        if s not in passed:
            result = verdict(design, trace, costs.slowed(s), slo)  # None: missed, stopped early
            passed[s] = result is not None and result.meets(slo)
        return passed[s]

    lo, hi = prior.quantile(0.005), prior.quantile(0.995)
    if not meets(lo):
        return None
    if meets(hi):
        return math.inf
    passing = sorted(s for s in passed if lo <= s <= hi and passed[s])
    failing = sorted(s for s in passed if lo <= s <= hi and not passed[s])
    lo, hi = max(passing), min(s for s in failing if s > max(passing)) if any(s > max(passing) for s in failing) \
        else hi
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo
