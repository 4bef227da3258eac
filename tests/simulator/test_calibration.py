"""Profiles replace roofline estimates where measured; links come from profiles and nccl-tests."""

from __future__ import annotations

import argparse
import json

import pytest

from simulator.calibration import CalibratedCost
from simulator.costs import CostModels
from simulator.errors import SimInputError
from simulator.inputs import build_costs
from simulator.links import LinkTable, fit_link
from simulator.models import load_model
from simulator.nccl_tests import link_from_nccl_tests, parse_nccl_tests
from simulator.operators import decode_work, prefill_work
from simulator.profiles import ProfiledModel, check_model, load_profile
from tests.simulator.conftest import DATA


def write(tmp_path, payload: dict, name: str = "profile.json"):
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


DECODE = [{"op": "decode_step", "batch": 1, "context": 1000, "seconds": 0.0075},
          {"op": "decode_step", "batch": 1, "context": 9000, "seconds": 0.0085},
          {"op": "decode_step", "batch": 64, "context": 2000, "seconds": 0.012}]
PREFILL = [{"op": "prefill", "tokens": 512, "seconds": 0.02}, {"op": "prefill", "tokens": 4096, "seconds": 0.11}]


def calibrated(costs: CostModels, tmp_path, measurements: list[dict]) -> CalibratedCost:
    profile = load_profile(write(tmp_path, {"device": "H100", "measurements": measurements}))
    return CostModels(costs.model, costs.catalog, (profile,)).replica("H100", 1)


def test_decode_steps_equal_measurements_where_measured(costs: CostModels, tmp_path) -> None:
    cost = calibrated(costs, tmp_path, DECODE)
    for m in DECODE:
        ((_, a, b),) = cost.decode_pieces(m["batch"])
        assert a + b * m["batch"] * m["context"] == pytest.approx(m["seconds"], rel=1e-9)
    # between measured batch sizes the correction (measured / roofline) of each term is interpolated:
    # at batch 16 and 32 it lies strictly between those at the measured 1 and 64, in order
    roof = costs.replica("H100", 1)

    def corrections(batch: int) -> tuple[float, float]:
        ((_, a, b),), ((_, ra, rb),) = cost.decode_pieces(batch), roof.decode_pieces(batch)
        return a / ra, b / rb
    at = {batch: corrections(batch) for batch in (1, 16, 32, 64)}
    for term in (0, 1):
        assert at[1][term] > at[16][term] > at[32][term] > at[64][term], (term, at)


def test_prefill_ratio_is_exact_at_measured_sizes_and_held_outside(costs: CostModels, tmp_path) -> None:
    cost = calibrated(costs, tmp_path, PREFILL)
    roof = costs.replica("H100", 1)
    for m in PREFILL:
        assert cost.seconds(prefill_work(m["tokens"], 0, 1)) == pytest.approx(m["seconds"], rel=1e-9)
    ratio_small = PREFILL[0]["seconds"] / roof.seconds(prefill_work(512, 0, 1))
    assert cost.seconds(prefill_work(100, 0, 1)) == pytest.approx(ratio_small * roof.seconds(prefill_work(100, 0, 1)))
    # no decode measurements: decode stays roofline
    assert cost.decode_pieces(8) == roof.decode_pieces(8)


def test_attention_measurements_scale_the_per_token_attention_cost(costs: CostModels, tmp_path) -> None:
    beta = costs.replica("H20", 1).attention_seconds_per_token()
    one_layer = beta / costs.model.num_layers
    # as benchmarks/attention.py writes it: one layer, the driver's device name
    profile = load_profile(write(tmp_path, {"device": "NVIDIA H20", "measurements": [
        {"op": "decode_attention", "batch": 8, "context": 4096, "seconds": 2 * one_layer * 8 * 4096},
        {"op": "attention", "batch": 2, "context": 1024, "layers": 4, "seconds": 2 * 4 * one_layer * 2 * 1024}]}))
    cost = CostModels(costs.model, costs.catalog, (profile,)).replica("H20", 1)
    assert cost.attention_seconds_per_token() == pytest.approx(2 * beta)


def test_driver_device_names_resolve_to_catalog_entries(catalog) -> None:
    assert catalog.resolve("NVIDIA H100 80GB HBM3") == "H100"
    assert catalog.resolve("NVIDIA H200") == "H200"
    assert catalog.resolve("NVIDIA A100-SXM4-80GB") == "A100-80G"
    assert catalog.resolve("NVIDIA L4") == "L4"
    with pytest.raises(SimInputError, match="matches no catalog entries"):
        catalog.resolve("NVIDIA B300")


def test_profile_links_map_local_devices_and_skip_the_host_tier(tmp_path) -> None:
    path = write(tmp_path, {"links": [
        {"src": "gpu0", "dst": "gpu1", "bytes": 1e6, "seconds": 1.1e-4, "method": "KVHandoff"},
        {"src": "gpu0", "dst": "gpu1", "bytes": 1e8, "seconds": 2.1e-3},
        {"src": "gpu0", "dst": "redis-host", "bytes": 1e6, "seconds": 0.01}]})
    profile = load_profile(path, device="H100")
    assert [(p.src, p.dst) for p in profile.links] == [("H100", "H100")] * 2
    link = fit_link([(p.bytes, p.seconds) for p in profile.links])
    assert link.bandwidth == pytest.approx(99e6 / 1.99e-3)
    assert link.latency_s == pytest.approx(1.1e-4 - 1e6 * 1.99e-3 / 99e6)


@pytest.mark.parametrize("payload, message", [
    ({"measurements": []}, "no 'device'"),
    ({"device": "H100", "tp": 0}, "tp must be a positive integer"),
    ({"device": "H100", "measurements": [{"op": "matmul", "seconds": 1}]},
     r"measurements\[0\]: must be an object with op"),
    ({"device": "H100", "measurements": [{"op": "prefill", "tokens": 10, "seconds": -1}]},
     "seconds must be a positive"),
    ({"device": "H100", "measurements": [{"op": "decode_step", "batch": 2.5, "context": 1, "seconds": 1}]},
     "batch must be a positive int"),
    ({"device": "H100", "links": [{"src": "a"}]}, r"links\[0\]: must have src, dst, bytes and seconds"),
    ({"device": "H100", "memory": {"total_bytes": 10}}, "memory: free_bytes must be a positive"),
    ({"device": "H100", "memory": {"total_bytes": 10, "free_bytes": 11}}, "free_bytes 11 exceeds"),
])
def test_bad_profiles_name_the_entry(tmp_path, payload: dict, message: str) -> None:
    with pytest.raises(SimInputError, match=message):
        load_profile(write(tmp_path, payload))


def test_measured_memory_sizes_the_kv_cache(costs: CostModels, tmp_path) -> None:
    """A profile's measured device memory replaces the catalog's (free bytes, less the engine's reserve)."""
    from simulator.costs import kv_capacity_tokens
    total, free = 80 * 2**30, 70 * 2**30  # 10 GiB held by something else on the device
    profile = load_profile(write(tmp_path, {"device": "H100", "memory": {"total_bytes": total, "free_bytes": free}}))
    measured = CostModels(costs.model, costs.catalog, (profile,))
    assert measured.catalog["H100"].memory_bytes == pytest.approx(free - 0.1 * total)
    assert measured.slowed(1.5).catalog["H100"].memory_bytes == pytest.approx(free - 0.1 * total)
    assert kv_capacity_tokens(costs.model, measured.catalog["H100"], 1, 2048) < \
        kv_capacity_tokens(costs.model, costs.catalog["H100"], 1, 2048)


def test_profile_for_another_model_is_refused(costs: CostModels, tmp_path) -> None:
    profile = load_profile(write(tmp_path, {"device": "H100", "model": "qwen2-7b", "measurements": PREFILL}))
    with pytest.raises(SimInputError, match="measured on model 'qwen2-7b'"):
        CostModels(costs.model, costs.catalog, (profile,))
    # benchmarks/decode_step.py names the model per measurement
    steps = [{**m, "model": "tiny"} for m in DECODE]
    profile = load_profile(write(tmp_path, {"device": "NVIDIA H100 80GB HBM3", "measurements": steps}))
    with pytest.raises(SimInputError, match="measured on model 'tiny'"):
        CostModels(costs.model, costs.catalog, (profile,))
    steps = [{**m, "model": "llama-3-8b"} for m in DECODE]
    profile = load_profile(write(tmp_path, {"device": "NVIDIA H100 80GB HBM3", "measurements": steps}))
    assert CostModels(costs.model, costs.catalog, (profile,)).replica("H100", 1).decode_pieces(1) != \
        costs.replica("H100", 1).decode_pieces(1)


def test_nccl_tests_tables_give_bus_bandwidth_and_latency() -> None:
    rows = parse_nccl_tests((DATA / "all_reduce_perf_h100x8.txt").read_text())
    assert len(rows) == 15 and rows[0].size_bytes == 8
    assert max(r.busbw_gbs for r in rows) == pytest.approx(360, rel=0.01)
    link = link_from_nccl_tests(DATA / "sendrecv_perf_h100_l40s.txt")
    assert link.bandwidth == pytest.approx(21.5e9, rel=0.01)
    assert link.latency_s == pytest.approx(9e-6)


def test_nccl_tests_errors(tmp_path) -> None:
    no_header = tmp_path / "a.txt"
    no_header.write_text("8 2 float sum -1 1.0 0 0 0\n")
    with pytest.raises(SimInputError, match="no nccl-tests header"):
        link_from_nccl_tests(no_header)
    bad = tmp_path / "b.txt"
    bad.write_text("#  size count type redop root time algbw busbw #wrong\n  8 2 float sum -1 fast 0 0 0\n")
    with pytest.raises(SimInputError, match="b.txt:2: not a row of size, time and busbw"):
        link_from_nccl_tests(bad)


def test_measured_links_override_the_nic_default(catalog) -> None:
    table = LinkTable(catalog, {("L40S", "H100"): link_from_nccl_tests(DATA / "sendrecv_perf_h100_l40s.txt")})
    assert table.between("H100", "L40S").bandwidth == pytest.approx(21.5e9, rel=0.01)
    assert table.between("H100", "A10G").bandwidth == catalog["A10G"].network_bandwidth
    with pytest.raises(SimInputError, match="unknown hardware"):
        LinkTable(catalog, {("H100", "TPUv9"): table.between("H100", "L40S")})


def test_a_real_h100_profile_from_benchmarks_decode_step(costs: CostModels) -> None:
    """Measured by benchmarks/decode_step.py on one H100 (2026-11-23, llama-3-8b shape, 272-token contexts)."""
    profile = load_profile(DATA / "h100_decode_step_calibration.json")
    cost = CostModels(costs.model, costs.catalog, (profile,)).replica("H100", 1)
    roof = costs.replica("H100", 1)
    for m in profile.measurements:
        ((_, a, b),) = cost.decode_pieces(m.batch)
        context = m.batch * m.context
        assert a + b * context == pytest.approx(m.seconds, rel=1e-9)
        assert 1.3 < m.seconds / roof.seconds(decode_work(m.batch, context)) < 1.8  # our engine vs the roofline


def test_profile_shape_must_match_the_simulated_model(costs: CostModels, tmp_path, capsys) -> None:
    """`tierserve calibrate` records the model's shape: any name of the same shape fits, another shape is
    refused by simulate / plan (build_costs), and a profile naming no model is used with a warning."""
    shape = {**ProfiledModel.of(costs.model, "bfloat16", "/models/Meta-Llama-3-8B").as_dict(),
             "name": "Meta-Llama-3-8B"}
    same = write(tmp_path, {"device": "H100", "model": shape,
                            "measurements": PREFILL}, "same.json")
    args = argparse.Namespace(model="llama-3-8b", catalog=[], profile=[str(same)], nccl_tests=[])
    assert build_costs(args).calibrated and capsys.readouterr().err == ""
    for change, says in (({"num_kv_heads": 32}, "num_kv_heads 32 vs 8"),
                         ({"dtype": "float32"}, "dtype float32 \\(4 bytes\\) vs 2 bytes")):
        other = write(tmp_path, {"device": "H100", "model": {**shape, **change}, "measurements": PREFILL},
                      "other.json")
        with pytest.raises(SimInputError, match=f"profile {other} was measured on model 'Meta-Llama-3-8B' "
                                                f"\\(/models/Meta-Llama-3-8B\\), not on the simulated model "
                                                f"'llama-3-8b': {says}"):
            build_costs(argparse.Namespace(**{**vars(args), "profile": [str(other)]}))
    with pytest.raises(SimInputError, match="'qwen2-7b': num_layers 32 vs 28"):
        check_model(load_profile(same), load_model("qwen2-7b"))
    old = write(tmp_path, {"device": "H100", "measurements": PREFILL}, "old.json")  # older calibrate output
    assert build_costs(argparse.Namespace(**{**vars(args), "profile": [str(old)]})).calibrated
    assert f"warning: profile {old} does not say which model it was measured on; using it for llama-3-8b" \
        in capsys.readouterr().err
    named = write(tmp_path, {"device": "H100", "model": "llama-3-8b", "measurements": PREFILL}, "named.json")
    assert check_model(load_profile(named), costs.model) is None  # names are checked in CostModels
