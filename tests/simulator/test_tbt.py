"""Token-gap statistics from segments equal those of the expanded per-token samples."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.request import Request
from simulator.tbt import TokenGaps


def test_quantiles_cdf_and_mean_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    segments = [(int(rng.integers(1, 40)), int(rng.integers(1, 30)), float(rng.uniform(0.005, 0.05)),
                 float(rng.choice([0.0, rng.uniform(0, 1e-4)]))) for _ in range(300)]
    requests = []
    for i in range(50):  # joined requests whose first decode token waited longer than its step
        r = Request(i, 0.0, 10, 5, None)
        r.ttft_at, r.first_step_s = 1.0, segments[i][2]
        r.first_decode_at = 1.0 + r.first_step_s + float(rng.uniform(0, 0.5))
        requests.append(r)
    samples = [d0 + i * delta for b, m, d0, delta in segments for i in range(m) for _ in range(b)]
    for r in requests:
        samples.remove(r.first_step_s)
        samples.append(r.first_decode_at - r.ttft_at)
    samples = np.sort(samples)
    gaps = TokenGaps.collect(segments, requests)
    assert gaps.count == len(samples)
    assert gaps.mean() == pytest.approx(samples.mean(), rel=1e-9)
    for q, got in zip((0.5, 0.9, 0.99), gaps.quantiles([0.5, 0.9, 0.99])):
        expected = samples[int(np.ceil(q * len(samples))) - 1]
        assert got == pytest.approx(expected, abs=2e-7)
    xs = np.array([0.01, 0.02, 0.3])
    assert gaps.cdf(xs) == pytest.approx(np.searchsorted(samples, xs, "right") / len(samples))
