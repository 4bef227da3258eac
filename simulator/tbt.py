"""Token-level time-between-tokens statistics from decode segments, without one sample per token.

Each segment (batch, steps, first, delta) stands for ``batch`` tokens per step whose gaps are
first, first + delta, ... over ``steps`` steps. A request's first decode token also waited for
its KV and a batch slot: that gap replaces the bare step time it has in the segments. Gaps outside
any segment (the token a preempted request's recompute samples) are kept one by one (``extra``).
Step-time jitter is host noise added to every step (serving.py): a gap is the modeled one plus
``scale * (f - 1)``, ``f`` lognormal of median 1 and log-sd ``jitter`` (right-skewed: a garbage
collection or a late Ray call delays a step by milliseconds whatever its GPU work). The CDF averages
the modeled one over the noise's quantile nodes, so a 5 ms decode step spreads relatively far more
than a 30 ms mixed prefill iteration.
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
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1))  # host-noise nodes, seconds
    weights: np.ndarray = field(default_factory=lambda: np.ones(1))   # and their probabilities

    @classmethod
    def collect(cls, segments: list[tuple[int, int, float, float]], requests: list[Request],
                extra: list[float] = (), jitter: float = 0.0, scale_s: float = 0.0) -> TokenGaps:
        seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
        joined = [r for r in requests if r.first_decode_at >= 0]
        gaps = np.array([r.first_decode_at - r.ttft_at for r in joined])
        steps = np.array([r.first_step_s for r in joined])
        return cls(seg[:, 0], seg[:, 1], seg[:, 2], seg[:, 3], np.sort(gaps), np.sort(steps),
                   np.sort(np.asarray(extra, dtype=np.float64)), *noise_offsets(jitter, scale_s))

    @property
    def count(self) -> float:
        return float(np.dot(self.batch, self.steps)) + len(self.extra)

    def count_at_most(self, xs: np.ndarray) -> np.ndarray:
        """Tokens whose gap is <= x, for each x in ``xs`` (averaged over the host-noise nodes)."""
        xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
        if len(self.offsets) == 1:
            return self._modeled_at_most(xs - self.offsets[0])
        return sum(w * self._modeled_at_most(xs - a) for a, w in zip(self.offsets, self.weights))

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

    @property
    def noisy(self) -> bool:
        return len(self.offsets) > 1

    def quantiles(self, qs: list[float], tolerance_s: float = 1e-7) -> list[float]:
        """For each q, the smallest gap g with at least q of all tokens at or below it (bisection;
        with host noise, from the sorted modeled gaps shifted by each noise node)."""
        if self.count == 0:
            return [float("nan")] * len(qs)
        if self.noisy:
            return self._noisy_quantiles(qs)
        lo = np.zeros(len(qs))
        hi = np.full(len(qs), float(max(np.max(self.first + self.delta * (self.steps - 1), initial=0.0),
                                        np.max(self.first_gaps, initial=0.0), np.max(self.extra, initial=0.0))))
        target = np.asarray(qs) * self.count
        while np.max(hi - lo) > tolerance_s:
            mid = (lo + hi) / 2
            below = self.count_at_most(mid) >= target
            hi, lo = np.where(below, mid, hi), np.where(below, lo, mid)
        return hi.tolist()

    def _noisy_quantiles(self, qs: list[float], grid: int = 4000) -> list[float]:
        """Modeled gaps as weighted points (``_points``), their CDF shifted by every noise node and
        averaged, read on a log grid (0.2-0.3% apart)."""
        values, cum = self._points()
        lo = max(values[0] + self.offsets.min(), values[values > 0].min() * 0.5, 1e-7)
        xs = np.geomspace(lo, values[-1] + self.offsets.max(), grid)
        cdf = self._shifted_cdf(values, cum, xs)
        idx = np.minimum(np.searchsorted(cdf, np.asarray(qs) - 1e-12), grid - 1)
        return xs[idx].tolist()

    def _points(self, samples: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Modeled gaps as weighted points, sorted, and their cumulative weights: a segment's
        arithmetic run as ``samples`` points, the first-token fixes as +-1 points."""
        steps = self.steps
        spread = (np.arange(samples) + 0.5) / samples
        values = (self.first[:, None] + self.delta[:, None] * (steps[:, None] - 1) * spread[None, :]).ravel()
        weights = np.repeat(self.batch * steps / samples, samples)
        values = np.concatenate([values, self.first_gaps, self.first_steps, self.extra])
        weights = np.concatenate([weights, np.ones(len(self.first_gaps)), -np.ones(len(self.first_steps)),
                                  np.ones(len(self.extra))])
        order = np.argsort(values, kind="stable")
        return values[order], np.cumsum(weights[order])

    def _shifted_cdf(self, values: np.ndarray, cum: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The points' CDF at ``xs``, shifted by every noise node and averaged."""
        cdf = np.zeros(len(xs))
        for a, w in zip(self.offsets, self.weights):
            idx = np.searchsorted(values, xs - a, "right")
            cdf += w * np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0.0)
        cdf /= self.count
        return cdf

    def mean(self) -> float:
        if self.count == 0:
            return float("nan")
        seg = self.batch * (self.steps * self.first + self.delta * self.steps * (self.steps - 1) / 2)
        return float((seg.sum() + self.first_gaps.sum() - self.first_steps.sum() + self.extra.sum()) / self.count)

    def cdf(self, xs: np.ndarray) -> np.ndarray:
        """Share of tokens with gaps <= each x; with host noise, from the weighted points the
        quantiles read (exact per segment, it costs nodes x xs x segments: seconds for a plot)."""
        if self.noisy and self.count:
            return self._shifted_cdf(*self._points(), np.atleast_1d(np.asarray(xs, dtype=np.float64)))
        return self.count_at_most(xs) / max(self.count, 1.0)


def noise_offsets(sigma: float, scale_s: float, nodes: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """Host noise ``scale_s * (f - 1)``, f lognormal of median 1 and log-sd ``sigma``, as Gauss-Hermite
    nodes and weights (they reach the tails that p99 needs; an odd count keeps the median, 0); one
    node, 0, without noise."""
    if sigma <= 0 or scale_s <= 0:
        return np.zeros(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return scale_s * (np.exp(sigma * z) - 1), w / w.sum()
