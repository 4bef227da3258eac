"""`tierserve plan` and `tierserve simulate` through simulator.cli.main and as a real process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from cluster.config import load_cluster_config
from simulator.cli import add_commands, main
from tests.simulator.conftest import DATA

TRACE = "synthetic:n=600,rate=8,workload=conversation,seed=2"


def test_add_commands_registers_plan_and_simulate() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "--trace", TRACE, "--slo", "ttft_p99=1"])
    assert callable(args.func) and args.model == "llama-3-8b"
    assert parser.parse_args(["simulate", "--validate"]).validate


def test_plan_writes_a_cluster_config_plots_and_results(tmp_path, capsys) -> None:
    code = main(["plan", "--trace", TRACE, "--slo", "ttft_p99=1,tbt_p99=80ms", "--hardware", "H100,L40S",
                 "--out", str(tmp_path), "--pareto", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "cheapest design per family" in out and "chosen:" in out
    config = load_cluster_config(tmp_path / "cluster.yaml")
    assert config.model == "meta-llama/Meta-Llama-3-8B"
    for name in ("pareto.png", "latency_cdf.png", "plan.json"):
        assert (tmp_path / name).stat().st_size > 0
    best = json.loads((tmp_path / "plan.json").read_text())["best"]
    assert best["percentiles"]["ttft_p99"] <= 1 and best["percentiles"]["tbt_p99"] <= 0.08

    # the written config simulates as the same design
    code = main(["simulate", "--trace", TRACE, "--config", str(tmp_path / "cluster.yaml"), "--slo",
                 "ttft_p99=1,tbt_p99=80ms", "--out", str(tmp_path / "sim")])
    assert code == 0
    result = json.loads((tmp_path / "sim" / "result.json").read_text())
    assert result["design"] == best["design"]
    assert result["percentiles"] == best["percentiles"]
    assert "meets" in capsys.readouterr().out


def test_simulate_with_profiles_and_nccl_tests(tmp_path, capsys) -> None:
    profile = tmp_path / "h100.json"
    profile.write_text(json.dumps({"measurements": [{"op": "prefill", "tokens": 2048, "seconds": 0.09}],
                                   "links": [{"src": "gpu0", "dst": "gpu1", "bytes": 268435456, "seconds": 0.01}]}))
    code = main(["simulate", "--trace", TRACE, "--design", "prefill=H100x1,decode=L40Sx2", "--profile",
                 f"{profile}:H100", "--nccl-tests", f"H100:L40S={DATA / 'sendrecv_perf_h100_l40s.txt'}"])
    assert code == 0
    assert "1xH100 -> 2xL40S" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_and_exit_code_2(capsys) -> None:
    assert main(["simulate", "--trace", TRACE, "--design", "prefill=H100x1,decode=B300x2"]) == 2
    assert "unknown hardware 'B300'" in capsys.readouterr().err
    assert main(["simulate", "--trace", TRACE, "--design", "prefill=H100"]) == 2
    assert "is not ROLE=HWxN" in capsys.readouterr().err
    assert main(["plan", "--trace", TRACE, "--slo", "ttft_p100=1"]) == 2
    assert "SLO key 'ttft_p100'" in capsys.readouterr().err
    assert main(["simulate", "--design", "colocated=H100x1"]) == 2
    assert "needs --trace" in capsys.readouterr().err


def test_runs_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "simulate", "--trace", TRACE, "--design",
                           "colocated=A100-80Gx2", "--rate-scale", "0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "colocated 2xA100-80G" in proc.stdout
