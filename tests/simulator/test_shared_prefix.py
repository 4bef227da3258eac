"""Shared-prefix (Hydragen-style) decode steps: the shared_prefix_decode profile op, the modeled
cost, its calibration from measurements, and plans/simulations of shared-prefix workloads."""

from __future__ import annotations

import json

import pytest

from simulator.bounds import LoadBounds
from simulator.cli import main
from simulator.costs import CostModels
from simulator.decode_batch import DecodeBatch
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.operators import decode_work
from simulator.profiles import load_profile
from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.run import simulate
from simulator.shared_prefix import SharedPrefixes, shared_segments
from simulator.step_curve import run
from simulator.traces.load import load_trace
from simulator.traces.trace import Trace, make_trace
from tests.simulator.conftest import DATA

# benchmarks/shared_prefix.py on one H100, 2026-11-23 (benchmarks/results/shared-prefix-h100-2026-11-23/)
H100_SHARED = DATA / "h100_shared_prefix_calibration.json"
H100_DECODE = DATA / "h100_decode_step_calibration.json"


def write(tmp_path, measurements: list[dict]):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"device": "H100", "measurements": measurements}))
    return path


def group(batch: int, prefix: int, suffix: int, block: int = 64) -> Trace:
    """``batch`` requests whose prompts are one shared ``prefix`` and ``suffix`` - 1 tokens of their own, so
    that each sequence's context at its first decode step is prefix + suffix."""
    return load_trace(f"synthetic:n={batch},rate=1,prompt=fixed:{suffix - 1},output=fixed:8,"
                      f"prefix_groups=1,prefix_tokens={prefix},block={block}")


def first_step(cost: IterationCost, trace: Trace, sharing: bool = True) -> float:
    """Seconds of the first decode step of all the trace's requests in one batch."""
    shared = SharedPrefixes(cost, trace.block_tokens) if sharing else None
    batch = DecodeBatch(cost, [], lambda req, t: None, shared)
    for i, runs in enumerate(shared_segments(trace)):
        req = Request(i, 0.0, int(trace.prompt_tokens[i]), 8, trace.hash_ids[i])
        req.shared_runs = runs
        req.generated = 1  # prefilled: its first token is made
        batch.join(req)
    return run(batch.pieces, batch.batch, batch.context - batch.saved, 1)


def test_the_h100_benchmark_profile_parses() -> None:
    profile = load_profile(H100_SHARED)
    assert profile.device == "NVIDIA H100 80GB HBM3" and profile.model == "llama-3-8b"
    points = profile.of("shared_prefix_decode")
    assert len(points) == 9
    assert (points[0].batch, points[0].prefix, points[0].suffix, points[0].layers) == (32, 1024, 313, 1)
    assert points[0].seconds == pytest.approx(5.3856e-05)


@pytest.mark.parametrize("entry, message", [
    ({"batch": 1, "prefix": 1024, "suffix": 300, "seconds": 1e-4}, "batch must be >= 2"),
    ({"batch": 32, "suffix": 300, "seconds": 1e-4}, r"prefix must be a positive int, got None"),
    ({"batch": 32, "prefix": 1024, "suffix": 0, "seconds": 1e-4}, "suffix must be a positive int, got 0"),
    ({"batch": 32, "prefix": 10.5, "suffix": 300, "seconds": 1e-4}, "prefix must be a positive int"),
    ({"batch": 32, "prefix": 1024, "suffix": 300, "seconds": "fast"}, "seconds must be a positive float"),
    ({"batch": 32, "prefix": 1024, "suffix": 300, "seconds": 1e-4, "layers": 0}, "layers must be a positive int"),
])
def test_bad_shared_prefix_entries_name_the_file_and_entry(tmp_path, entry: dict, message: str) -> None:
    good = {"op": "shared_prefix_decode", "batch": 32, "prefix": 1024, "suffix": 300, "seconds": 1e-4}
    path = write(tmp_path, [good, {"op": "shared_prefix_decode", **entry}])
    with pytest.raises(SimInputError, match=message) as err:
        load_profile(path)
    assert f"{path}: measurements[1] (shared_prefix_decode)" in str(err.value)


def test_a_measurement_faster_than_its_suffixes_is_refused(costs: CostModels, tmp_path) -> None:
    profile = load_profile(write(tmp_path, [
        {"op": "shared_prefix_decode", "batch": 256, "prefix": 1024, "suffix": 300, "seconds": 1e-6}]))
    with pytest.raises(SimInputError, match="shared_prefix_decode at batch 256, prefix 1024 .* suffixes"):
        CostModels(costs.model, costs.catalog, (profile,)).replica("H100", 1)


def test_roofline_reads_the_prefix_once_and_computes_it_as_a_matmul(costs: CostModels) -> None:
    cost = costs.replica("H100", 1)
    beta = cost.attention_seconds_per_token()
    # few members: memory bound, the prefix costs one sequence's read; many: its FLOPs bind
    assert cost.shared_prefix_seconds(2, 4096) == pytest.approx(4096 * beta)
    assert cost.shared_prefix_seconds(256, 4096) > 2 * cost.shared_prefix_seconds(2, 4096)
    assert cost.shared_prefix_seconds(256, 4096) < 256 * 4096 * beta
    batch, prefix, suffix = 64, 4096, 300
    trace = group(batch, prefix, suffix)
    shared, plain = first_step(cost, trace), first_step(cost, trace, sharing=False)
    # against the operator-by-operator roofline of a decode step: plain reads every sequence's whole
    # context; shared reads the suffixes, plus the prefix's own cost once
    assert plain == pytest.approx(cost.seconds(decode_work(batch, batch * (prefix + suffix))), rel=1e-9)
    assert shared == pytest.approx(cost.seconds(decode_work(batch, batch * suffix))
                                   + cost.shared_prefix_seconds(batch, prefix), rel=1e-9)
    assert shared < 0.5 * plain  # the weights remain


def test_calibrated_steps_equal_the_h100_measurements_at_the_measured_shapes(costs: CostModels) -> None:
    profile = load_profile(H100_SHARED)
    cost = CostModels(costs.model, costs.catalog, (profile,)).replica("H100", 1)
    layers = costs.model.num_layers
    for m in profile.measurements:
        trace = group(m.batch, m.prefix, m.suffix)
        alpha = cost.decode_pieces(m.batch)[0][1]
        shared = first_step(cost, trace)
        # everything but attention, plus the measured layer times every layer
        assert shared == pytest.approx(alpha + layers * m.seconds, rel=1e-9)
        assert shared < first_step(cost, trace, sharing=False)
    # between measured shapes the cost lies between its neighbours
    mid = cost.shared_prefix_seconds(64, 8192)
    assert cost.shared_prefix_seconds(32, 8192) < mid < cost.shared_prefix_seconds(128, 8192)
    assert cost.shared_prefix_seconds(128, 4096) < cost.shared_prefix_seconds(128, 8192) < \
        cost.shared_prefix_seconds(128, 16384)


def test_sharing_that_is_not_cheaper_takes_the_plain_path(costs: CostModels) -> None:
    """Two sequences and a 1K prefix: the measured shared path's fixed costs exceed a second read."""
    cost = CostModels(costs.model, costs.catalog, (load_profile(H100_SHARED),)).replica("H100", 1)
    trace = group(2, 1024, 100)
    assert first_step(cost, trace) == first_step(cost, trace, sharing=False)


def test_nested_prefixes_share_each_run_among_its_holders(costs: CostModels) -> None:
    """A prefix trie (as Mooncake hash_ids give it): block 1 held by three prompts, block 2 by two."""
    trace = make_trace("trie", [0.0, 0.1, 0.2, 0.3], [1600, 1600, 1100, 700], [5] * 4,
                       [(1, 2, 3, 4), (1, 2, 5, 6), (1, 7, 8), (9, 10)], 512)
    assert shared_segments(trace) == (((1, 0, 1), (2, 1, 2)), ((1, 0, 1), (2, 1, 2)), ((1, 0, 1),), ())
    cost = costs.replica("H100", 1)
    beta = cost.attention_seconds_per_token()
    # memory bound: each shared block is read once instead of once per holder (2 + 1 blocks saved)
    assert first_step(cost, trace, sharing=False) - first_step(cost, trace) == pytest.approx(3 * 512 * beta)


def test_simulated_shared_prefix_workload_decodes_faster(costs: CostModels) -> None:
    spec = ("synthetic:n=1500,rate=20,prompt=lognormal:200:0.5,output=lognormal:200:0.5,"
            "prefix_groups=4,prefix_tokens=8192,block=64,seed=3")
    trace = load_trace(spec)
    design = Design(prefill=PoolSpec("H100", 4), decode=PoolSpec("H100", 2))
    shared = simulate(design, trace, costs)
    plain = simulate(Design(prefill=design.prefill, decode=design.decode, shared_prefix_attention=False), trace, costs)
    assert shared.completed == plain.completed == 1500
    assert shared.percentiles["tbt_p50"] < 0.6 * plain.percentiles["tbt_p50"]
    # the planner's decode bound counts a shared prefix once per batch, not once per sequence
    unhashed = Trace(trace.name, trace.arrival_s, trace.prompt_tokens, trace.output_tokens)
    bounds = [LoadBounds(t, costs, 256, 8192) for t in (trace, unhashed)]
    assert bounds[0].mean_context < 0.1 * bounds[1].mean_context
    assert bounds[0].decode("H100", 1) <= bounds[1].decode("H100", 1)


def test_simulate_and_plan_with_the_h100_shared_prefix_profile(tmp_path, capsys) -> None:
    trace = ("synthetic:n=800,rate=12,prompt=lognormal:200:0.5,output=lognormal:150:0.5,"
             "prefix_groups=4,prefix_tokens=4096,block=64,seed=1")
    base = ["simulate", "--trace", trace, "--design", "prefill=H100x2,decode=H100x1",
            "--profile", str(H100_SHARED), "--profile", str(H100_DECODE)]
    assert main([*base, "--out", str(tmp_path / "shared")]) == 0
    assert main([*base, "--no-shared-prefix", "--out", str(tmp_path / "plain")]) == 0
    shared, plain = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("shared", "plain"))
    assert shared["percentiles"]["tbt_p50"] < 0.7 * plain["percentiles"]["tbt_p50"]
    capsys.readouterr()
    code = main(["plan", "--trace", trace, "--slo", "ttft_p99=2,tbt_p99=60ms", "--profile", str(H100_SHARED),
                 "--hardware", "H100", "--kinds", "disaggregated", "--pareto", "1", "--out", str(tmp_path / "plan")])
    assert code == 0
    assert "chosen: " in capsys.readouterr().out
    best = json.loads((tmp_path / "plan" / "plan.json").read_text())["best"]
    assert best["percentiles"]["tbt_p99"] <= 0.06
