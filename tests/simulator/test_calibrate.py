"""`tierserve calibrate` on CPU with the tiny model: measures, writes a profile simulate reads."""

from __future__ import annotations

import json

from simulator.cli import main
from simulator.costs import CostModels
from simulator.hardware import load_catalog
from simulator.models import load_model
from simulator.profiles import load_profile


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
    CostModels(load_model("llama-3-8b"), load_catalog(), (profile,)).replica("CPU-DDR5", 1)
    assert "wrote" in capsys.readouterr().out
