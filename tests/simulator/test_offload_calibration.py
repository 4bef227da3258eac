"""The offload model calibrated by measured curves (benchmarks/offload_decode.py's profile ops)."""

from __future__ import annotations

import json

import pytest

from simulator.costs import CostModels
from simulator.models import load_model
from simulator.offload import OffloadCurves
from simulator.profiles import Measurement, Profile, load_profile


def profile(steps=((128, 4096, 2, 0.040),)) -> Profile:
    ms = [Measurement("offload_dense", 0.010, batch=64), Measurement("offload_dense", 0.016, batch=256),
          Measurement("offload_link", 0.002, batch=64), Measurement("offload_link", 0.006, batch=256)]
    ms += [Measurement("offload_step", s, batch=b, context=c, micro_batches=m) for b, c, m, s in steps]
    return Profile("H100", 1, "llama-3-8b", tuple(ms), ())


def test_measured_stages_replace_the_estimates(catalog):
    cost = CostModels(load_model("llama-3-8b"), catalog, (profile(),)).offload("H100", 1, "H100", 1.0, 2)
    dense, net, attention = cost.stages(160, 0)
    assert dense == pytest.approx(0.013) and net == pytest.approx(0.004)  # between the measured batches
    assert cost.stages(512, 0)[0] == pytest.approx(0.032)  # proportional beyond the largest
    assert cost.stages(32, 0)[1] == pytest.approx(0.002)   # the fixed cost below the smallest
    assert attention == 0


def test_the_measured_step_is_predicted_and_the_pieces_agree(catalog):
    cost = CostModels(load_model("llama-3-8b"), catalog, (profile(),)).offload("H100", 1, "H100", 1.0, 2)
    assert cost.step_seconds(128, 128 * 4096) == pytest.approx(0.040)  # the correction makes the point exact
    assert cost.correction != 1.0
    for context in (0, 128 * 1024, 128 * 4096, 128 * 16384):
        x0, a, b = max(p for p in cost.decode_pieces(128) if p[0] <= context)
        assert a + b * context == pytest.approx(cost.step_seconds(128, context))
    other = CostModels(load_model("llama-3-8b"), catalog, (profile(),)).offload("H100", 1, "H100", 1.0, 3)
    assert other.correction == 1.0  # no step measured with 3 micro-batches


def test_without_offload_ops_the_model_is_the_roofline(catalog, costs):
    assert OffloadCurves.of(None) is None
    plain = costs.offload("H100", 1, "H100", 1.0, 2)
    assert plain.curves is None and plain.correction == 1.0


def test_profile_file_round_trip(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"device": "H100", "tp": 1, "measurements": [
        {"op": "offload_dense", "batch": 64, "seconds": 0.01},
        {"op": "offload_link", "batch": 64, "seconds": 0.002},
        {"op": "offload_step", "batch": 64, "context": 1024, "micro_batches": 2, "seconds": 0.02}]}))
    curves = OffloadCurves.of(load_profile(path))
    assert curves.dense == ((64, 0.01),) and curves.link == ((64, 0.002),) and curves.steps == ((64, 1024, 2, 0.02),)
