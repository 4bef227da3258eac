"""`tierserve plan` and `tierserve simulate` through simulator.cli.main and as a real process."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys

import yaml
from rich.console import Console

from cluster.config import load_cluster_config
from simulator.cli import add_commands, main
from simulator.metrics import SimResult
from simulator.report import results_table
from simulator.traces.load import load_trace
from simulator.traces.sample import SAMPLE_PATH
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
    assert "prices (assumptions; they mix clouds" in out and "H100 $2.99/h: specialty clouds" in out
    assert json.loads((tmp_path / "plan.json").read_text())["price_sources"]
    # the budget counts CPU seconds; both CPU and wall time are reported (a loaded machine's wall time is longer)
    assert re.search(r"designs in [\d.]+ CPU s \([\d.]+ s wall\)", out), out
    assert re.search(r"took [\d.]+ CPU s of a 60 CPU s budget \(this process: user \+ system\), [\d.]+ s wall", out)
    timing = json.loads((tmp_path / "plan.json").read_text())
    assert 0 < timing["plan_cpu_s"] <= timing["command_cpu_s"] and timing["command_wall_s"] > 0
    assert timing["time_budget_cpu_s"] == 60
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


def test_shipped_sample_trace_is_small_loads_and_regenerates_byte_for_byte(tmp_path, capsys) -> None:
    assert SAMPLE_PATH.stat().st_size < 200_000
    trace = load_trace(str(SAMPLE_PATH))
    assert len(trace) == 2000 and 5 < trace.rate < 6
    assert main(["sample-trace", str(tmp_path / "sample.csv")]) == 0
    assert (tmp_path / "sample.csv").read_bytes() == SAMPLE_PATH.read_bytes()
    assert main(["sample-trace", str(tmp_path / "other.csv"), "--spec", "synthetic:n=5,rate=1,seed=3"]) == 0
    assert len(load_trace(str(tmp_path / "other.csv"))) == 5


def test_simulate_config_uses_the_model_plan_chose(tmp_path, capsys) -> None:
    # README: plan on the shipped sample for llama-3-70b, then simulate its config (issue 13: the
    # config's model was ignored and llama-3-8b simulated, TTFT p99 ~10x lower than the plan's)
    trace = str(SAMPLE_PATH)
    code = main(["plan", "--trace", trace, "--model", "llama-3-70b", "--slo", "ttft_p99=2,tbt_p99=100ms",
                 "--kinds", "disaggregated", "--hardware", "H100,A100-80G", "--search-requests", "400",
                 "--pareto", "1", "--out", str(tmp_path)])
    assert code == 0
    best = json.loads((tmp_path / "plan.json").read_text())["best"]
    config = tmp_path / "cluster.yaml"
    assert yaml.safe_load(config.read_text())["plan"]["model"] == "llama-3-70b"
    assert main(["simulate", "--trace", trace, "--config", str(config), "--out", str(tmp_path / "sim")]) == 0
    assert json.loads((tmp_path / "sim" / "result.json").read_text())["percentiles"] == best["percentiles"]
    assert "model llama-3-70b" in capsys.readouterr().out


def _config(tmp_path, model: str, plan: dict | None = None):
    data = {"model": model, "pools": {"prefill": {"replicas": 1, "hardware": {"accelerator_type": "H100",
                                                                              "num_gpus": 4}},
                                      "decode": {"replicas": 1, "hardware": {"accelerator_type": "H100",
                                                                             "num_gpus": 4}}}}
    if plan is not None:
        data["plan"] = plan
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _percentiles(tmp_path, name: str, argv: list[str]) -> dict:
    assert main(["simulate", "--trace", "synthetic:n=200,rate=4,seed=5", *argv, "--out", str(tmp_path / name)]) == 0
    return json.loads((tmp_path / name / "result.json").read_text())["percentiles"]


def test_simulate_config_maps_a_checkpoint_name_to_the_catalog(tmp_path, capsys) -> None:
    by_design = _percentiles(tmp_path, "design", ["--design", "prefill=H100x1@tp4,decode=H100x1@tp4",
                                                  "--model", "llama-3-70b"])
    for model in ("meta-llama/Meta-Llama-3-70B", "/models/Meta-Llama-3-70B", "llama-3-70b"):
        assert _percentiles(tmp_path, "config", ["--config", _config(tmp_path, model)]) == by_design
    assert _percentiles(tmp_path, "agrees", ["--config", _config(tmp_path, "/models/Meta-Llama-3-70B"),
                                             "--model", "llama-3-70b"]) == by_design


def test_simulate_config_model_errors(tmp_path, capsys) -> None:
    config = _config(tmp_path, "meta-llama/Meta-Llama-3-70B")
    assert main(["simulate", "--trace", TRACE, "--config", config, "--model", "llama-3-8b"]) == 2
    assert "--model llama-3-8b disagrees with the model of" in capsys.readouterr().err
    unknown = _config(tmp_path, "/models/my-finetune")
    assert main(["simulate", "--trace", TRACE, "--config", unknown]) == 2
    err = capsys.readouterr().err
    assert "model '/models/my-finetune' is not in the simulator's catalog" in err and "--model" in err
    assert len(err.strip().splitlines()) == 1
    # --model says what an unmapped checkpoint is
    assert main(["simulate", "--trace", "synthetic:n=50,rate=2", "--config", unknown, "--model", "llama-3-70b"]) == 0


def _result(design: str, utilization: dict[str, float]) -> SimResult:
    percentiles = {"ttft_p50": 0.2, "ttft_p99": 1.26, "tbt_p50": 0.02, "tbt_p99": 0.0278, "tpot_p99": 0.0279,
                   "e2e_p99": 27.7}
    return SimResult(design, "disaggregated", 2000, 0, 370.0, 4.69, 900.0, percentiles, 0.99, 4.66, 25.4, 13.2,
                     0.0656, utilization, 0.0)


def test_results_table_fits_80_columns_unclipped() -> None:
    results = [_result("3xA100-80G(tp4) -> 1xA100-80G(tp4) + attn 1xH20", {"prefill": 0.46, "decode": 1.0,
                                                                             "attention": 0.16}),
               _result("colocated 10xA100-80G(tp4)", {"colocated": 0.89})]
    for width in (80, 100, 200):
        table = results_table(results, "cheapest design per family (* = chosen)", ["*", ""], width)
        console = Console(width=width, file=io.StringIO(), color_system=None)
        console.print(table)
        text = console.file.getvalue()
        assert "…" not in text and max(map(len, text.splitlines())) <= width
        for column in table.columns:  # every header whole, every cell's words whole
            for cell in [column.header, *column.cells]:
                assert all(word in text for word in str(cell).split()), (width, cell)
        shown = [str(c.header) for c in table.columns]
        assert {"design", "$/h", "req/s", "TTFT p99", "TBT p99", "$/Mtok"} <= set(shown)
        if width == 200:
            assert len(shown) == 11 and table.caption is None
        else:
            assert table.caption.startswith(f"left out to fit {width} columns: tok/J")
