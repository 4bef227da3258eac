"""Per-request serving costs of each path (serving.py) and uncertainty bands (uncertainty.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.profiles import load_profile
from simulator.run import simulate
from simulator.serving import NONE, PathCosts, ServingCosts
from simulator.slo import parse_slo
from simulator.traces.trace import make_trace
from simulator.uncertainty import UNCALIBRATED, SlowdownPrior, band, calibrated_prior
from tests.simulator.conftest import DATA

ONE = make_trace("one", [0.0], [1000], [20])


def with_serving(costs: CostModels, serving: ServingCosts) -> CostModels:
    return CostModels(costs.model, costs.catalog, serving=serving)


def test_latency_adds_to_what_the_client_sees(costs: CostModels) -> None:
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1), layerwise_transfer=False)
    bare = simulate(design, ONE, costs)
    slow = simulate(design, ONE, with_serving(costs, ServingCosts(prefill=PathCosts(latency_s=0.01))))
    assert slow.percentiles["ttft_p50"] == pytest.approx(bare.percentiles["ttft_p50"] + 0.01)
    assert slow.percentiles["e2e_p50"] == pytest.approx(bare.percentiles["e2e_p50"] + 0.01)
    assert slow.percentiles["tbt_p50"] == pytest.approx(bare.percentiles["tbt_p50"])


def test_handoff_calls_delay_the_first_decode_token(costs: CostModels) -> None:
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1), layerwise_transfer=False)
    bare = simulate(design, ONE, costs).samples.tbt
    slow = simulate(design, ONE, with_serving(costs, ServingCosts(prefill=PathCosts(handoff_s=0.02)))).samples.tbt
    assert slow.first_gaps[0] == pytest.approx(bare.first_gaps[0] + 0.02)


def test_prefill_busy_time_serializes_with_prompts(costs: CostModels) -> None:
    """Two prompts at once: the second waits for the first's serving work on the prefill engine."""
    trace = make_trace("two", [0.0, 0.0], [2048, 2048], [2, 2])
    design = Design(prefill=PoolSpec("H100", 1, max_num_batched_tokens=2048), decode=PoolSpec("H100", 1))
    bare = simulate(design, trace, costs).samples.ttft
    busy = simulate(design, trace, with_serving(costs, ServingCosts(prefill=PathCosts(busy_s=0.05)))).samples.ttft
    assert busy[0] == pytest.approx(bare[0])
    assert busy[1] == pytest.approx(bare[1] + 0.05)


def test_decode_busy_time_stalls_every_running_sequence(costs: CostModels) -> None:
    """A handoff received between two steps lengthens that step's gap for the running sequences."""
    trace = make_trace("stall", [0.0, 0.5], [500, 500], [400, 2])
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1))
    bare = simulate(design, trace, costs)
    stalled = simulate(design, trace, with_serving(costs, ServingCosts(decode=PathCosts(busy_s=0.03))))
    assert stalled.samples.tbt.count == bare.samples.tbt.count
    assert stalled.percentiles["tbt_p99"] < 0.03 < max(stalled.samples.tbt.first)  # one stalled step
    assert stalled.percentiles["e2e_p50"] > bare.percentiles["e2e_p50"] + 0.03


def test_step_jitter_widens_the_tbt_tail_not_its_median(costs: CostModels) -> None:
    trace = make_trace("steady", [0.0], [1000], [200])
    design = Design(colocated=PoolSpec("H100", 1))
    flat = simulate(design, trace, costs).percentiles
    jitter = simulate(design, trace, with_serving(costs, ServingCosts(step_jitter=0.2))).percentiles
    assert jitter["tbt_p50"] == pytest.approx(flat["tbt_p50"], rel=0.02)
    assert jitter["tbt_p99"] > 1.4 * flat["tbt_p99"]


def test_profiles_carry_serving_costs(costs: CostModels, tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"device": "H100", "serving": {"prefill": {"busy_s": 0.01}, "step_jitter": 0.1,
                                                              "source": "a run"}}))
    models = CostModels(costs.model, costs.catalog, (load_profile(path),))
    assert models.serving.prefill.busy_s == 0.01 and models.serving.source == "a run"
    path.write_text(json.dumps({"device": "H100", "serving": {"prefill": {"busy": 0.01}}}))
    with pytest.raises(SimInputError, match="serving.prefill must be an object"):
        load_profile(path)
    path.write_text(json.dumps({"device": "H100", "serving": {"decode": {"busy_s": -1}}}))
    with pytest.raises(SimInputError, match="busy_s must be seconds"):
        load_profile(path)


def test_slowdown_scales_steps_and_serving_costs(costs: CostModels) -> None:
    stack = with_serving(costs, ServingCosts(prefill=PathCosts(busy_s=0.01)))
    slowed = stack.slowed(2.0)
    a, b = stack.replica("H100", 1).decode_pieces(8)[0][1:], slowed.replica("H100", 1).decode_pieces(8)[0][1:]
    assert b == pytest.approx((2 * a[0], 2 * a[1]))
    assert slowed.path_costs().prefill.busy_s == pytest.approx(0.02)
    assert stack.slowed(1.0) is stack


def test_band_brackets_the_median_and_p_slo_follows_the_prior(costs: CostModels) -> None:
    trace = make_trace("load", [0.05 * i for i in range(200)], [1500] * 200, [100] * 200)
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1))
    slo = parse_slo("ttft_p99=0.2,tbt_p99=50ms")
    b = band(design, trace, costs, slo, UNCALIBRATED)
    low, mid, high = b.metric("ttft_p99")
    assert low <= mid <= high
    assert b.slowdowns[0] < 1 < b.slowdowns[2]
    assert 0 <= b.p_slo <= 1 and b.p_slo == pytest.approx(UNCALIBRATED.cdf(b.slo_limit))
    # the SLO holds just below the limit and fails above it
    assert simulate(design, trace, costs.slowed(b.slo_limit), slo).meets(slo)
    assert not simulate(design, trace, costs.slowed(b.slo_limit * 1.15), slo).meets(slo)
    sure = SlowdownPrior(1.0, 0.0, "exact")
    assert band(design, trace, costs, parse_slo("ttft_p99=100"), sure).p_slo == 1.0


def test_calibrated_prior_from_leave_one_out_residuals(costs: CostModels) -> None:
    profile = load_profile(DATA / "h100_decode_step_calibration.json")
    calibrated = CostModels(costs.model, costs.catalog, (profile,))
    prior = calibrated_prior(calibrated)
    assert prior.median == 1.0 and 0.03 <= prior.sigma < 0.2 and "leave-one-out" in prior.source
    assert UNCALIBRATED.quantile(0.5) == pytest.approx(1.3)
    assert UNCALIBRATED.cdf(UNCALIBRATED.quantile(0.9)) == pytest.approx(0.9)
    assert math.isclose(replace(UNCALIBRATED, sigma=0.0).cdf(1.3), 1.0)


def test_no_serving_costs_leave_the_engine_model_unchanged(costs: CostModels) -> None:
    design = Design(colocated=PoolSpec("H100", 1))
    assert simulate(design, ONE, costs).percentiles == simulate(design, ONE, with_serving(costs, NONE)).percentiles


def test_host_noise_adds_milliseconds_whatever_the_step() -> None:
    """Step jitter is additive host noise: a 30 ms mixed iteration's tail grows by what a 5 ms decode
    step's does, not six times as much."""
    from simulator.tbt import TokenGaps
    tails = []
    for step in (0.005, 0.030):
        gaps = TokenGaps.collect([(4, 1000, step, 0.0)], [], jitter=0.5, scale_s=0.004)
        p50, p99 = gaps.quantiles([0.5, 0.99])
        assert p50 == pytest.approx(step, rel=0.01)
        tails.append(p99 - p50)
    assert tails[1] == pytest.approx(tails[0], rel=0.02) and tails[0] == pytest.approx(0.004 * (3.2 - 1), rel=0.1)
