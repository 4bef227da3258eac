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
from simulator.links import LinkTable
from simulator.models import load_model
from simulator.profiles import check_model, load_profile


def test_calibrate_writes_a_profile_that_simulate_reads(tiny_model, tmp_path, capsys) -> None:
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tiny_model), "--device", "cpu", "--tokens", "16", "64",
                 "--batches", "1", "4", "--context", "32", "--repeats", "1", "--handoff-tokens", "512", "16384",
                 "--allreduce-tokens", "1", "4096", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    ops = [m["op"] for m in data["measurements"]]
    assert ops == ["prefill", "prefill", "decode_step", "decode_step"] and data["device"] == "CPU-DDR5"
    assert all(m["seconds"] > 0 for m in data["measurements"]) and "handoff" not in data
    tiny = load_model(str(tiny_model))
    # the KV handoff between two CPU processes (gloo, paired through a private redis-server), whole blocks
    block_bytes = 2 * tiny.num_layers * 16 * tiny.num_kv_heads * tiny.head_dim * 4
    assert [(link["src"], link["dst"], link["tokens"], link["bytes"]) for link in data["links"]] == \
        [("cpu0", "cpu1", 512, 32 * block_bytes), ("cpu0", "cpu1", 16384, 1024 * block_bytes)]
    profile = load_profile(out)
    assert [(lp.src, lp.dst) for lp in profile.links] == [("CPU-DDR5", "CPU-DDR5")] * 2
    assert all(lp.seconds > 0 for lp in profile.links)
    # simulate times a CPU-DDR5 handoff with the link fitted to them, not the catalog's
    link = build_costs(argparse.Namespace(model=str(tiny_model), catalog=[], profile=[str(out)],
                                          nccl_tests=[])).links.between("CPU-DDR5", "CPU-DDR5")
    assert link != LinkTable(load_catalog()).between("CPU-DDR5", "CPU-DDR5")
    assert link.seconds(profile.links[1].bytes) == pytest.approx(profile.links[1].seconds, rel=1e-6)
    # the all-reduce over the same pair: one token's hidden state (fp32) and 4096 tokens'
    width = 4 * tiny.hidden_size
    assert [(p["tokens"], p["bytes"]) for p in data["allreduce"]["points"]] == [(1, width), (4096, 4096 * width)]
    big = data["allreduce"]["points"][1]
    assert profile.allreduce is not None and profile.allreduce.ranks == 2
    assert profile.allreduce.latency_s == data["allreduce"]["points"][0]["seconds"]
    assert profile.allreduce.busbw_bytes_s >= big["bytes"] / big["seconds"]  # the best of the points
    # and it replaces the catalog's for CPU-DDR5 (what a tp=2 CPU replica's all-reduce costs)
    costs = CostModels(tiny, load_catalog(), (profile,))
    assert costs.catalog["CPU-DDR5"].interconnect_gbs == pytest.approx(profile.allreduce.busbw_bytes_s / 1e9)
    assert costs.catalog["CPU-DDR5"] != load_catalog()["CPU-DDR5"]
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
                 "--handoff-tokens", "--allreduce-tokens", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["links"] == [] and "not measured" in data["handoff"] and "allreduce" not in data  # no pair asked
    mixed = [m for m in data["measurements"] if m["op"] == "mixed_step"]
    assert [(m["batch"], m["tokens"]) for m in mixed] == [(2, 8), (2, 24), (3, 8), (3, 24)]
    assert all(m["seconds"] > 0 and m["context"] >= 16 for m in mixed)
    points = load_profile(out).of("mixed_step")
    assert [(p.batch, p.tokens) for p in points] == [(2, 8), (2, 24), (3, 8), (3, 24)]


def test_a_copy_inside_one_device_is_not_a_link(tmp_path) -> None:
    """Older calibrate output timed a copy inside the device (gpu0 -> gpu0): skipped, not read as the
    link between two devices of that kind (a handoff at HBM speed)."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"device": "H200", "measurements": [
        {"op": "decode_step", "batch": 1, "context": 256, "seconds": 0.005}], "links": [
        {"src": "gpu0", "dst": "gpu0", "bytes": 1 << 30, "seconds": 0.0005},
        {"src": "gpu0", "dst": "gpu1", "bytes": 1 << 30, "seconds": 0.004}]}))
    assert [(lp.src, lp.dst, lp.seconds) for lp in load_profile(path).links] == [("H200", "H200", 0.004)]


def test_a_profile_allreduce_is_read_as_an_all_reduce_perf_log(tmp_path) -> None:
    """The smallest message's time is the latency, the best bus bandwidth (2 (N-1)/N of bytes/s) the
    bandwidth; a malformed entry is refused, naming the field."""
    path = tmp_path / "ar.json"
    entry = {"ranks": 4, "points": [{"bytes": 1 << 24, "seconds": 0.001}, {"bytes": 8192, "seconds": 2e-5}]}
    path.write_text(json.dumps({"device": "H200", "measurements": [], "allreduce": entry}))
    ar = load_profile(path).allreduce
    assert ar is not None and (ar.latency_s, ar.ranks) == (2e-5, 4)
    assert ar.busbw_bytes_s == pytest.approx((1 << 24) / 0.001 * 1.5)
    path.write_text(json.dumps({"device": "H200", "measurements": [], "allreduce": {**entry, "ranks": 1}}))
    with pytest.raises(SimInputError, match="allreduce: ranks must be an integer >= 2"):
        load_profile(path)


def test_calibrate_fits_lengths_to_the_model(tiny_model, tmp_path, capsys) -> None:
    """Prompt lengths past the model's positions run at the longest it holds (said); a decode context
    past them is refused with the option named, never an engine traceback."""
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(tiny_model), "--device", "cpu", "--tokens", "64", "4096",
                 "--batches", "1", "--context", "16", "--repeats", "1", "--handoff-tokens", "--allreduce-tokens",
                 "--out", str(out)]) == 0
    limit = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert [m["tokens"] for m in json.loads(out.read_text())["measurements"] if m["op"] == "prefill"] == [64, limit - 1]
    assert f"--tokens: lengths over {limit - 1} run at {limit - 1}" in capsys.readouterr().out
    assert main(["calibrate", "--model", str(tiny_model), "--device", "cpu", "--context", str(limit),
                 "--handoff-tokens", "--allreduce-tokens", "--out", str(out)]) == 2
    assert f"--context {limit}: its decode steps reach" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "tpu"], "--device must be cuda or cpu"),
    (["--handoff-tokens", "0"], "--handoff-tokens must be positive"),
    (["--tokens", "-5"], "--tokens must be positive"),
    (["--repeats", "0"], "--context and --repeats must be >= 1"),
])
def test_calibrate_refuses_bad_options_by_name(tiny_model, tmp_path, capsys, args, message) -> None:
    assert main(["calibrate", "--model", str(tiny_model), "--out", str(tmp_path / "c.json"), *args]) == 2
    assert message in capsys.readouterr().err
