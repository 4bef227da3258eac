"""Overlapped scheduling: a mixed iteration's time split between two token gaps (simulator/overlap.py),
the launch times a profile gives (calibration.py), measured mixed steps, and gaps moved in TokenGaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.operators import decode_work, prefill_work
from simulator.overlap import delivery_hold, host_floor, launch_shift
from simulator.profiles import load_profile
from simulator.run import simulate
from simulator.serving import ServingCosts
from simulator.tbt import TokenGaps
from simulator.traces.trace import make_trace

FLAT = [{"op": "prefill", "tokens": 128, "seconds": 0.0208}, {"op": "prefill", "tokens": 256, "seconds": 0.0209},
        {"op": "prefill", "tokens": 2048, "seconds": 0.051}]
DECODE = [{"op": "decode_step", "batch": 8, "context": 1000, "seconds": 0.005},
          {"op": "decode_step", "batch": 64, "context": 1000, "seconds": 0.007}]


def costs_with(base: CostModels, tmp_path, measurements: list[dict], serving: ServingCosts | None = None):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"device": "H100", "measurements": measurements}))
    return CostModels(base.model, base.catalog, (load_profile(path),), serving=serving or ServingCosts())


class _Cost:
    def __init__(self, launch: float) -> None:
        self.launch = launch

    def launch_seconds(self, tokens: int) -> float:
        return self.launch


def test_launch_shift() -> None:
    assert launch_shift(_Cost(0.020), 1000, 0.050, 0.006) == pytest.approx(0.014)  # gaps 20 and 36 ms
    assert launch_shift(_Cost(0.020), 100, 0.015, 0.006) == pytest.approx(0.009)   # host-bound: all of it
    assert launch_shift(_Cost(0.004), 1000, 0.050, 0.006) == 0.0                   # hidden behind the step
    assert launch_shift(object(), 1000, 0.050, 0.006) == 0.0                       # the roofline: no launch


def test_launch_seconds_from_a_flat_prefill_floor_or_host_times(costs: CostModels, tmp_path) -> None:
    cost = costs_with(costs, tmp_path, FLAT + DECODE).replica("H100", 1)
    assert cost.launch_seconds(1000) == pytest.approx(0.0208)
    scaled = costs_with(costs, tmp_path, FLAT + DECODE, ServingCosts(launch_scale=1.5)).replica("H100", 1)
    assert scaled.launch_seconds(1000) == pytest.approx(0.0312)
    sloped = [{"op": "prefill", "tokens": 512, "seconds": 0.02}, {"op": "prefill", "tokens": 4096, "seconds": 0.11}]
    assert costs_with(costs, tmp_path, sloped).replica("H100", 1).launch_seconds(1000) == 0.0
    hosts = [{"op": "mixed_step", "batch": 32, "tokens": 96, "context": 1000, "seconds": 0.008, "host_seconds": 0.002},
             {"op": "mixed_step", "batch": 32, "tokens": 992, "context": 1000, "seconds": 0.03, "host_seconds": 0.014}]
    cost = costs_with(costs, tmp_path, FLAT + hosts).replica("H100", 1)
    assert cost.launch_seconds(128) == pytest.approx(0.002) and cost.launch_seconds(1024) == pytest.approx(0.014)
    # measured mixed steps take the place of the prefill curve for mixed iterations, where measured
    work = prefill_work(992, 0, 1)
    assert cost.mixed_seconds(work, 32, 32 * 1000) == pytest.approx(0.03, rel=1e-6)
    assert cost.seconds(work + decode_work(32, 32 * 1000)) != pytest.approx(0.03, rel=1e-3)


def test_moved_gaps_keep_the_count_and_the_mean() -> None:
    """A segment of negative batch takes tokens out of a gap: 10 x 5 steps at 5 ms, then a mixed step of
    30 ms whose 8 ms launch shift moves to the 2 previous tokens' gaps."""
    segments = [(10, 5, 0.005, 0.0), (2, 1, 0.030 - 0.008, 0.0), (-2, 1, 0.005, 0.0), (2, 1, 0.013, 0.0)]
    gaps = TokenGaps.collect(segments, [])
    assert gaps.count == 52
    assert gaps.mean() == pytest.approx((48 * 0.005 + 2 * 0.013 + 2 * 0.022) / 52)
    assert gaps.quantiles([0.5, 0.99]) == pytest.approx([0.005, 0.022], abs=1e-6)


def test_overlap_moves_tbt_tail_not_the_timeline(costs: CostModels, tmp_path) -> None:
    """The same colocated run with and without the launch split: TTFT and finishes equal, the token
    gaps' mean equal, the longest gap shorter."""
    rng = np.random.default_rng(0)
    n = 200
    trace = make_trace("t", np.cumsum(rng.exponential(1 / 8, n)), rng.integers(500, 2000, n), np.full(n, 64))
    design = Design(colocated=PoolSpec("H100", 1, 1, 128, 2048))
    split = simulate(design, trace, costs_with(costs, tmp_path, FLAT + DECODE))
    plain = costs_with(costs, tmp_path, FLAT + DECODE)
    plain.replica("H100", 1)._launch = None  # the same costs, no launch: nothing split
    unsplit = simulate(design, trace, plain)
    assert split.percentiles["ttft_p99"] == pytest.approx(unsplit.percentiles["ttft_p99"])
    assert split.output_tps == pytest.approx(unsplit.output_tps)
    assert split.percentiles["tbt_p50"] == pytest.approx(unsplit.percentiles["tbt_p50"], rel=0.05)
    assert split.percentiles["tbt_p99"] < unsplit.percentiles["tbt_p99"]


def test_eager_iterations_take_their_launch_and_the_next(costs: CostModels, tmp_path) -> None:
    """host_floor: a mixed iteration is no shorter than its host launch plus the next step's (next_launch_s);
    without next_launch_s the floor is the launch alone, and the roofline has none."""
    hosts = [{"op": "mixed_step", "batch": 8, "tokens": 512, "context": 1000, "seconds": 0.01, "host_seconds": 0.016},
             {"op": "mixed_step", "batch": 64, "tokens": 512, "context": 1000, "seconds": 0.01, "host_seconds": 0.026}]
    serving = ServingCosts(launch_scale=1.5, next_launch_s=0.002)
    cost = costs_with(costs, tmp_path, FLAT + DECODE + hosts, serving).replica("H100", 1)
    assert cost.launch_seconds(550) == pytest.approx(0.021 * 1.5)  # the batch sizes' mean at one prompt length
    assert host_floor(cost, 550) == pytest.approx(0.021 * 1.5 + 0.002)
    assert cost.delivery_hold_seconds(550) == 0.0
    assert host_floor(object(), 550) == 0.0 and delivery_hold(object(), 550) == 0.0
    trace = make_trace("t", [0.0, 0.001], [600, 600], [8, 8])
    design = Design(colocated=PoolSpec("H100", 1, 1, 128, 2048))
    run = simulate(design, trace, costs_with(costs, tmp_path, FLAT + DECODE + hosts, serving))
    assert run.samples.ttft.min() >= 0.021 * 1.5 + 0.002 - 1e-9


def test_first_token_waits_for_the_next_eager_launch(costs: CostModels, tmp_path) -> None:
    """delivery_waits_launch: a first token read back as an eager iteration starts reaches the client after
    that iteration's launch; the timeline (throughput) is the same."""
    trace = make_trace("t", [0.0, 0.0], [1500, 1500], [16, 16])  # the second prompt's rest runs right after
    design = Design(colocated=PoolSpec("H100", 1, 1, 128, 2048))
    plain = simulate(design, trace, costs_with(costs, tmp_path, FLAT + DECODE))
    held = simulate(design, trace, costs_with(costs, tmp_path, FLAT + DECODE, ServingCosts(delivery_waits_launch=True)))
    assert held.output_tps == pytest.approx(plain.output_tps)
    assert held.samples.ttft.min() == pytest.approx(plain.samples.ttft.min() + 0.0208)
    assert held.samples.ttft.max() == pytest.approx(plain.samples.ttft.max())
