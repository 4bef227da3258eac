"""Token-level time-between-tokens statistics from decode segments, without one sample per token.

Each segment (batch, steps, first, delta) stands for ``batch`` tokens per step whose gaps are
first, first + delta, ... over ``steps`` steps. A request's first decode token also waited for
its KV and a batch slot: that gap replaces the bare step time it has in the segments. Gaps outside
any segment (the token a preempted request's recompute samples) are kept one by one (``extra``).
With a step-time ``jitter`` (a lognormal sigma), every gap is the modeled one times a factor of median 1
drawn from it: the CDF averages the modeled one over the factors' quantile nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.request import Request


@dataclass(frozen=True, eq=False)
class TokenGaps:
    batch: np.ndarray
    steps: np.ndarray
    first: np.ndarray
    delta: np.ndarray
    first_gaps: np.ndarray   # per request: ttft -> first decode token
    first_steps: np.ndarray  # the step time the segments count for that token
    extra: np.ndarray        # sorted gaps of tokens no segment holds
    factors: np.ndarray = field(default_factory=lambda: np.ones(1))  # step-time jitter nodes
    weights: np.ndarray = field(default_factory=lambda: np.ones(1))  # and their probabilities
    jitter: float = 0.0                                               # their lognormal sigma

    @classmethod
    def collect(cls, segments: list[tuple[int, int, float, float]], requests: list[Request],
                extra: list[float] = (), jitter: float = 0.0) -> TokenGaps:
        seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
        joined = [r for r in requests if r.first_decode_at >= 0]
        gaps = np.array([r.first_decode_at - r.ttft_at for r in joined])
        steps = np.array([r.first_step_s for r in joined])
        return cls(seg[:, 0], seg[:, 1], seg[:, 2], seg[:, 3], np.sort(gaps), np.sort(steps),
                   np.sort(np.asarray(extra, dtype=np.float64)), *jitter_factors(jitter), jitter)

    @property
    def count(self) -> float:
        return float(np.dot(self.batch, self.steps)) + len(self.extra)

    def count_at_most(self, xs: np.ndarray) -> np.ndarray:
        """Tokens whose gap is <= x, for each x in ``xs`` (averaged over the jitter factors)."""
        xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
        if len(self.factors) == 1:
            return self._modeled_at_most(xs / self.factors[0])
        return sum(w * self._modeled_at_most(xs / f) for f, w in zip(self.factors, self.weights))

    def _modeled_at_most(self, xs: np.ndarray) -> np.ndarray:
        """Tokens whose modeled gap is <= x, for each x in ``xs`` (a few at a time, to bound memory)."""
        out = np.empty(len(xs))
        for i in range(0, len(xs), 8):
            x = xs[i:i + 8, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                grown = np.where(self.delta > 0, np.floor((x - self.first) / self.delta) + 1,
                                 np.where(self.first <= x, self.steps, 0))
            n = np.clip(grown, 0, self.steps)
            fixes = (np.searchsorted(self.first_gaps, x[:, 0], "right")
                     - np.searchsorted(self.first_steps, x[:, 0], "right")
                   + np.searchsorted(self.extra, x[:, 0], "right"))
            out[i:i + 8] = n @ self.batch + fixes
        return out

    def quantiles(self, qs: list[float], tolerance_s: float = 1e-7) -> list[float]:
        """For each q, the smallest gap g with at least q of all tokens at or below it (bisection;
        with jitter, from a log-binned histogram convolved with the jitter's kernel)."""
        if self.count == 0:
            return [float("nan")] * len(qs)
        if self.jitter > 0:
            return self._jittered_quantiles(qs)
        lo = np.zeros(len(qs))
        hi = np.full(len(qs), float(max(np.max(self.first + self.delta * (self.steps - 1), initial=0.0),
                                        np.max(self.first_gaps, initial=0.0), np.max(self.extra, initial=0.0))
                                    * self.factors.max()))
        target = np.asarray(qs) * self.count
        while np.max(hi - lo) > tolerance_s:
            mid = (lo + hi) / 2
            below = self.count_at_most(mid) >= target
            hi, lo = np.where(below, mid, hi), np.where(below, lo, mid)
        return hi.tolist()

    def _jittered_quantiles(self, qs: list[float], bin_log: float = 0.002, samples: int = 4) -> list[float]:
        """Gaps in log-spaced bins (a segment's arithmetic run as ``samples`` points), the jitter a
        Gaussian kernel in log space; a quantile is its bin's centre (0.2% wide)."""
        steps = self.steps
        spread = (np.arange(samples) + 0.5) / samples
        values = (self.first[:, None] + self.delta[:, None] * (steps[:, None] - 1) * spread[None, :]).ravel()
        weights = np.repeat(self.batch * steps / samples, samples)
        values = np.concatenate([values, self.first_gaps, self.first_steps, self.extra])
        weights = np.concatenate([weights, np.ones(len(self.first_gaps)), -np.ones(len(self.first_steps)),
                                  np.ones(len(self.extra))])
        positive = values > 0
        logs = np.log(values[positive])
        lo, hi = logs.min() - 4 * self.jitter, logs.max() + 4 * self.jitter
        bins = max(1, int(np.ceil((hi - lo) / bin_log)))
        hist, _ = np.histogram(logs, bins=bins, range=(lo, hi), weights=weights[positive])
        half = int(np.ceil(4 * self.jitter / bin_log))
        x = np.arange(-half, half + 1) * bin_log / self.jitter
        kernel = np.exp(-x * x / 2)
        smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
        cdf = np.cumsum(smooth) / smooth.sum()
        idx = np.minimum(np.searchsorted(cdf, np.asarray(qs) - 1e-12), bins - 1)
        return np.exp(lo + (idx + 0.5) * bin_log).tolist()

    def mean(self) -> float:
        if self.count == 0:
            return float("nan")
        seg = self.batch * (self.steps * self.first + self.delta * self.steps * (self.steps - 1) / 2)
        return float((seg.sum() + self.first_gaps.sum() - self.first_steps.sum() + self.extra.sum()) / self.count)

    def cdf(self, xs: np.ndarray) -> np.ndarray:
        return self.count_at_most(xs) / max(self.count, 1.0)


def jitter_factors(sigma: float, nodes: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal factors of median 1 and their weights (Gauss-Hermite nodes, which reach the tails
    that p99 needs; an odd count keeps the median; one factor, 1, for sigma 0)."""
    if sigma <= 0:
        return np.ones(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return np.exp(sigma * z), w / w.sum()
