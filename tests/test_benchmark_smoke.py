"""The benchmarks that wait for a GPU session still run end to end on CPU (tiny shapes), so
device time is not spent discovering a broken script. Nothing here is timed or compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(module_args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *module_args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_shared_prefix_step_runs_on_cpu(tmp_path):
    run(["-m", "benchmarks.shared_prefix_step", "--shape", "micro", "--batch", "4", "--prefixes", "32", "64",
         "--question-tokens", "8", "--warmup-steps", "1", "--steps", "2"], tmp_path)
    rows = json.loads((tmp_path / "shared_prefix_step.json").read_text())["rows"]
    assert {(r["prefix"], r["shared_path"]) for r in rows} == {(32, True), (32, False), (64, True), (64, False)}
    assert all(r["step_kinds"].get("shared") for r in rows if r["shared_path"])
    assert (tmp_path / "shared_prefix_step.png").exists()


@pytest.mark.ray
@pytest.mark.redis
def test_prefix_serving_runs_on_cpu(tmp_path):
    run(["benchmarks/prefix_serving.py", "--shape", "micro", "--users", "8", "--requests-per-user", "2",
         "--rate", "100", "--system-tokens", "32", "--groups", "4", "--fewshot-tokens", "32",
         "--question-tokens", "8", "--output-tokens", "4", "--blocks-per-replica", "64", "--engine-baseline"],
        tmp_path)
    rows = json.loads((tmp_path / "prefix_serving.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["prefix-aware", "round-robin", "one engine"]
    assert all(r["requests"] == 16 and r["step_profiles"] for r in rows)


def test_step_inputs_runs_on_cpu(tmp_path):
    run(["-m", "benchmarks.step_inputs", "--batch", "4", "--prefix", "64", "--question-tokens", "8", "--steps", "3"],
        tmp_path)
    rows = json.loads((tmp_path / "step_inputs.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["no plan", "plan every step", "plan, PlanCache"]
    assert (tmp_path / "step_inputs.png").exists()
