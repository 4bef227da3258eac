"""`tierserve calibrate` on CPU with the tiny model: measures, writes a profile simulate reads."""

from __future__ import annotations

import argparse
import json

import pytest

from simulator.cli import main
from simulator.costs import CostModels
from simulator.errors import SimInputError
from simulator.hardware import load_catalog
from simulator.inputs import build_costs
from simulator.models import load_model
from simulator.profiles import check_model, load_profile


def test_calibrate_writes_a_profile_that_simulate_reads(tiny_model, tmp_path, capsys) -> None:
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tiny_model), "--device", "cpu", "--tokens", "16", "64",
                 "--batches", "1", "4", "--context", "32", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    ops = [m["op"] for m in data["measurements"]]
    assert ops == ["prefill", "prefill", "decode_step", "decode_step"] and data["device"] == "CPU-DDR5"
    assert all(m["seconds"] > 0 for m in data["measurements"]) and len(data["links"]) == 2
    profile = load_profile(out)
    assert profile.links[0].src == "CPU-DDR5" and profile.links[0].bytes < profile.links[1].bytes
    tiny = load_model(str(tiny_model))
    assert data["model"] == {"name": tiny_model.name, "path": str(tiny_model), "num_layers": tiny.num_layers,
                             "hidden_size": tiny.hidden_size, "num_heads": tiny.num_heads,
                             "num_kv_heads": tiny.num_kv_heads, "head_dim": tiny.head_dim,
                             "intermediate_size": tiny.intermediate_size, "vocab_size": tiny.vocab_size,
                             "dtype": "float32"}
    assert check_model(profile, tiny) is None
    CostModels(tiny, load_catalog(), (profile,)).replica("CPU-DDR5", 1)
    assert "wrote" in capsys.readouterr().out
    # the tiny model's profile is refused for llama-3-8b, naming the profile and both models
    args = argparse.Namespace(model="llama-3-8b", catalog=[], profile=[str(out)], nccl_tests=[])
    with pytest.raises(SimInputError, match=f"profile {out} was measured on model '{tiny_model.name}'.*"
                                            "not on the simulated model 'llama-3-8b': num_layers"):
        build_costs(args)
    assert main(["simulate", "--trace", "synthetic:n=50,rate=4,seed=1", "--design", "colocated=H100x1",
                 "--profile", str(out), "--no-band"]) == 2
    assert "was measured on model" in capsys.readouterr().err
    args.model = str(tiny_model)  # the model it was measured on: accepted, silently
    assert build_costs(args).profiles[("CPU-DDR5", 1)].measured_on == profile.measured_on
    assert capsys.readouterr().err == ""


def test_calibrate_mixed_steps(tiny_model, tmp_path) -> None:
    """--mixed-batches: a prompt prefilled beside B decoding sequences, one step per point."""
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tiny_model), "--device", "cpu", "--tokens", "16", "--batches", "2",
                 "--context", "16", "--mixed-batches", "2", "3", "--mixed-tokens", "8", "24", "--repeats", "1",
                 "--out", str(out)]) == 0
    mixed = [m for m in json.loads(out.read_text())["measurements"] if m["op"] == "mixed_step"]
    assert [(m["batch"], m["tokens"]) for m in mixed] == [(2, 8), (2, 24), (3, 8), (3, 24)]
    assert all(m["seconds"] > 0 and m["context"] >= 16 for m in mixed)
    points = load_profile(out).of("mixed_step")
    assert [(p.batch, p.tokens) for p in points] == [(2, 8), (2, 24), (3, 8), (3, 24)]
