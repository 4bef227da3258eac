"""Token-level time-between-tokens statistics from decode segments, without one sample per token.

Each segment (batch, steps, first, delta) stands for ``batch`` tokens per step whose gaps are
first, first + delta, ... over ``steps`` steps. A request's first decode token also waited for
its KV and a batch slot: that gap replaces the bare step time it has in the segments. Gaps outside
any segment (the token a preempted request's recompute samples) are kept one by one (``extra``).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def collect(cls, segments: list[tuple[int, int, float, float]], requests: list[Request],
                extra: list[float] = ()) -> TokenGaps:
        seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
        joined = [r for r in requests if r.first_decode_at >= 0]
        gaps = np.array([r.first_decode_at - r.ttft_at for r in joined])
        steps = np.array([r.first_step_s for r in joined])
        return cls(seg[:, 0], seg[:, 1], seg[:, 2], seg[:, 3], np.sort(gaps), np.sort(steps),
                   np.sort(np.asarray(extra, dtype=np.float64)))

    @property
    def count(self) -> float:
        return float(np.dot(self.batch, self.steps)) + len(self.extra)

    def count_at_most(self, xs: np.ndarray) -> np.ndarray:
        """Tokens whose gap is <= x, for each x in ``xs`` (a few at a time, to bound memory)."""
        xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
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
        """For each q, the smallest gap g with at least q of all tokens at or below it (bisection)."""
        if self.count == 0:
            return [float("nan")] * len(qs)
        lo = np.zeros(len(qs))
        hi = np.full(len(qs), float(max(np.max(self.first + self.delta * (self.steps - 1), initial=0.0),
                                        np.max(self.first_gaps, initial=0.0), np.max(self.extra, initial=0.0))))
        target = np.asarray(qs) * self.count
        while np.max(hi - lo) > tolerance_s:
            mid = (lo + hi) / 2
            below = self.count_at_most(mid) >= target
            hi, lo = np.where(below, mid, hi), np.where(below, lo, mid)
        return hi.tolist()

    def mean(self) -> float:
        if self.count == 0:
            return float("nan")
        seg = self.batch * (self.steps * self.first + self.delta * self.steps * (self.steps - 1) / 2)
        return float((seg.sum() + self.first_gaps.sum() - self.first_steps.sum() + self.extra.sum()) / self.count)

    def cdf(self, xs: np.ndarray) -> np.ndarray:
        return self.count_at_most(xs) / max(self.count, 1.0)
