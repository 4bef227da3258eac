"""benchmarks/predict_prefix_serving.py: its trace is prefix_serving.py's workload with chained
block hashes, and every policy runs on it in the simulator (a small trace, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.predict_prefix_serving import DECODE_PROFILE, Workload, build_trace, regime, run_config
from benchmarks.workload import shared_prefix_prompts

ROOT = Path(__file__).resolve().parents[2]
SMALL = Workload(users=32, requests_per_user=2, rate=40, system_tokens=128, groups=4, fewshot_tokens=256,
                 question_tokens=16, output_tokens=8)


def test_trace_shares_the_system_prompt_and_each_group_s_examples() -> None:
    _, prompts, groups = shared_prefix_prompts(SMALL)
    trace = build_trace(SMALL)
    assert len(trace) == 64 and set(trace.prompt_tokens.tolist()) == {400} and trace.block_tokens == 16
    assert all(len(h) == 25 for h in trace.hash_ids)
    by_group: dict[int, set] = {}
    for i in range(len(prompts)):  # arrivals are drawn in order, so trace row i is prompt i
        by_group.setdefault(groups[i], set()).add(trace.hash_ids[i][:24])  # system (8) + examples (16)
    assert all(len(prefixes) == 1 for prefixes in by_group.values())
    assert len({trace.hash_ids[i][:8] for i in range(64)}) == 1  # one system prompt
    assert len({trace.hash_ids[i][8] for i in range(64)}) == len(by_group)  # examples differ by group
    assert len({trace.hash_ids[i][-1] for i in range(64)}) == 64  # questions are the users' own


def test_every_policy_runs_and_prefix_aware_hits_the_cache_more() -> None:
    config = run_config(SMALL, 60, "shared", [DECODE_PROFILE])
    rows = config["rows"]
    assert set(rows) == {"prefix_aware", "round_robin", "cluster_rule"}
    assert all(r["completed"] == 64 and r["rejected"] == 0 for r in rows.values())
    assert rows["prefix_aware"]["hit_rate"] > rows["round_robin"]["hit_rate"]
    assert rows["cluster_rule"]["hit_rate"] > rows["round_robin"]["hit_rate"]
    assert rows["prefix_aware"]["prefill_tokens"] < rows["round_robin"]["prefill_tokens"]
    assert set(config["ratios"]) == {"prefix_aware", "cluster_rule"}


def test_the_planned_run_is_in_the_regime_the_workload_means() -> None:
    planned = Workload()  # 64 groups of 1K, 2K system prompt, 64 + 64 own tokens
    assert regime(planned, 3200)["ok"]  # system + 32 groups + 128 running requests' own blocks = 3200
    assert not regime(planned, 3199)["ok"] and not regime(planned, 4224)["ok"]  # 4224: every group fits


def test_command_line_writes_json_and_png(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/predict_prefix_serving.py", "--users", "16", "--groups", "4",
                           "--system-tokens", "128", "--fewshot-tokens", "256", "--question-tokens", "16",
                           "--output-tokens", "8", "--blocks", "60", "--rates", "20", "80", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "predict_prefix_serving.json").read_text())
    assert data["what"].startswith("SIMULATOR PREDICTION") and len(data["configs"]) == 2
    assert (tmp_path / "predict_prefix_serving.png").exists()
