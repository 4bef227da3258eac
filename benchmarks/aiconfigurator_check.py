"""Cross-check against NVIDIA's aiconfigurator: best tokens/s/GPU and aggregated vs disaggregated.

    python -m benchmarks.aiconfigurator_check                 # run aiconfigurator (CPU) and our simulator
    python -m benchmarks.aiconfigurator_check --reuse         # reuse aiconfigurator results saved in OUT/aic

aiconfigurator is not a tierserve dependency: install it next to it (``pip install aiconfigurator``;
0.12.0 was checked). For each case (a model, a GPU, a fixed prompt/output length, TTFT and TPOT
targets, a GPU count) it runs ``aiconfigurator cli default --backend vllm`` and reads its best
aggregated and disaggregated configurations (tokens/s/GPU at the largest concurrency meeting both
targets, its per-request estimates). Our side: the simulator's roofline (uncalibrated, x1, no
serving costs: aiconfigurator models the engine alone) on a Poisson trace of that length, the SLO
``ttft_p50, tpot_p50`` (aiconfigurator's targets are its per-request estimates, not tails); for
every design that fits the GPUs (colocated: one replica per tp, the rate scales with replicas;
disaggregated: every xPyD at the smallest tp that fits and its double) ``capacity.max_rate`` finds
the highest rate meeting the SLO; tokens/s/GPU = that run's output tokens/s (first arrival to last
token) / GPUs used. Caveat: with --requests 600 the run's drain after the last arrival lowers that
figure, and the rate search can ride a transient a longer trace would not absorb (rate x output
length / GPUs is 10x off for 7P:1D); a trace as long as the capacity needs is not done yet.
Writes OUT/aiconfigurator_check.json and table.md (OUT: --out, else $OUT, else
out/aiconfigurator-check); docs/simulator.md explains the disagreements.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simulator.capacity import max_rate
from simulator.costs import CostModels, min_tp
from simulator.design import Design, PoolSpec
from simulator.hardware import load_catalog
from simulator.models import load_model
from simulator.slo import parse_slo
from simulator.traces.load import load_trace


@dataclass(frozen=True)
class Case:
    name: str
    model: str        # ours
    aic_model: str    # aiconfigurator's (a Hugging Face id it ships a config for)
    hardware: str     # our catalog name
    system: str       # aiconfigurator's system
    isl: int
    osl: int
    ttft_ms: float
    tpot_ms: float
    gpus: int


CASES = (
    Case("8b-h200-chat", "llama-3-8b", "meta-llama/Meta-Llama-3.1-8B", "H200", "h200_sxm", 1024, 128, 1000, 50, 8),
    Case("8b-h200-long", "llama-3-8b", "meta-llama/Meta-Llama-3.1-8B", "H200", "h200_sxm", 4096, 512, 2000, 20, 8),
    Case("8b-h100-chat", "llama-3-8b", "meta-llama/Meta-Llama-3.1-8B", "H100", "h100_sxm", 1024, 128, 1000, 50, 8),
    Case("70b-h100-chat", "llama-3-70b", "meta-llama/Meta-Llama-3.1-70B", "H100", "h100_sxm", 1024, 128, 2000, 50, 8),
    Case("70b-h200-long", "llama-3-70b", "meta-llama/Meta-Llama-3.1-70B", "H200", "h200_sxm", 4096, 512, 3000, 40, 8),
)


@dataclass(frozen=True)
class Best:
    mode: str             # agg | disagg
    tokens_per_gpu: float
    config: str
    ttft_ms: float
    tpot_ms: float


def run_aiconfigurator(case: Case, aic_dir: Path, reuse: bool) -> dict[str, Best | None]:
    save = aic_dir / case.name
    if not (reuse and any(save.rglob("best_config_topn.csv"))):
        cmd = ["aiconfigurator", "cli", "default", "--model-path", case.aic_model, "--system", case.system,
               "--backend", "vllm", "--total-gpus", str(case.gpus), "--isl", str(case.isl), "--osl", str(case.osl),
               "--ttft", str(case.ttft_ms), "--tpot", str(case.tpot_ms), "--save-dir", str(save), "--no-color"]
        save.mkdir(parents=True, exist_ok=True)
        with (save / "log.txt").open("w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {mode: _aic_best(save, mode) for mode in ("agg", "disagg")}


def _aic_best(save: Path, mode: str) -> Best | None:
    files = sorted(save.rglob(f"{mode}/best_config_topn.csv"))
    rows = list(csv.DictReader(files[-1].open())) if files else []
    if not rows:
        return None
    r = max(rows, key=lambda row: float(row["tokens/s/gpu"]))
    if mode == "agg":
        config = f"{r['parallel'].split('pp')[0]} bs{r['bs']}"
    else:
        config = (f"{r['(p)workers']}P({r['(p)parallel'].split('pp')[0]}):"
                  f"{r['(d)workers']}D({r['(d)parallel'].split('pp')[0]}) dbs{r['(d)bs']}")
    return Best(mode, float(r["tokens/s/gpu"]), config, float(r["ttft"]), float(r["tpot"]))


def designs(case: Case, costs: CostModels) -> list[tuple[str, Design]]:
    """Colocated: one replica per tp (per-GPU rate does not change with replicas); disaggregated:
    every xPyD within the GPUs at the smallest tp that fits and its double."""
    hw = costs.catalog[case.hardware]
    low = min_tp(costs.model, hw, 8192, case.isl + case.osl)
    tps = [t for t in (low, 2 * low, 4 * low) if t and t <= hw.max_devices_per_node and t <= case.gpus]
    out = [("agg", Design(colocated=PoolSpec(case.hardware, 1, t))) for t in tps]
    for pt in tps[:2]:
        for dt in tps[:2]:
            for p in range(1, case.gpus // pt):
                for d in range(1, (case.gpus - p * pt) // dt + 1):
                    out.append(("disagg", Design(prefill=PoolSpec(case.hardware, p, pt),
                                                 decode=PoolSpec(case.hardware, d, dt))))
    return out


def run_ours(case: Case, requests: int) -> dict[str, Best | None]:
    costs = CostModels(load_model(case.model), load_catalog())
    slo = parse_slo(f"ttft_p50={case.ttft_ms}ms,tpot_p50={case.tpot_ms}ms")
    trace = load_trace(f"synthetic:n={requests},rate=1,prompt=fixed:{case.isl},output=fixed:{case.osl},seed=0")
    best: dict[str, Best | None] = {"agg": None, "disagg": None}
    for mode, design in designs(case, costs):
        cap = max_rate(design, trace, costs, slo, steps=5)
        if cap.result is None:
            continue
        gpus = sum(p.devices for p in design.pools().values())
        per_gpu = cap.result.output_tps / gpus  # the run's tokens/s, first arrival to last token (drain included)
        if best[mode] is None or per_gpu > best[mode].tokens_per_gpu:
            pct = cap.result.percentiles
            best[mode] = Best(mode, per_gpu, design.label(), pct["ttft_p50"] * 1e3, pct["tpot_p50"] * 1e3)
    return best


def choice(best: dict[str, Best | None]) -> str:
    agg, dis = best["agg"], best["disagg"]
    if agg is None or dis is None:
        return "agg" if dis is None and agg is not None else "disagg" if dis is not None else "-"
    return "agg" if agg.tokens_per_gpu >= dis.tokens_per_gpu else "disagg"


def table(rows: list[dict]) -> str:
    head = ("| case | ISL/OSL, TTFT/TPOT (ms) | aic agg | aic disagg | ours agg | ours disagg | best: ours / aic "
            "| choice aic / ours |\n|" + " --- |" * 8)
    lines = [head]
    for r in rows:
        c, a, o = r["case"], r["aic"], r["ours"]
        cell = lambda b: f"{b['tokens_per_gpu']:,.0f} ({b['config']})" if b else "none"  # noqa: E731
        top = lambda best: max((b["tokens_per_gpu"] for b in best.values() if b), default=0.0)  # noqa: E731
        ratio = f"{top(o) / top(a):.2f}x" if top(a) else "-"
        lines.append(f"| {c['name']} | {c['isl']}/{c['osl']}, {c['ttft_ms']:g}/{c['tpot_ms']:g} | {cell(a['agg'])} | "
                     f"{cell(a['disagg'])} | {cell(o['agg'])} | {cell(o['disagg'])} | {ratio} | "
                     f"{r['choice_aic']} / {r['choice_ours']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    p.add_argument("--requests", type=int, default=600, help="requests in our trace per simulation")
    p.add_argument("--reuse", action="store_true", help="reuse aiconfigurator results already in OUT")
    p.add_argument("--out", default=None)
    p.add_argument("--aic-dir", default=None, help="aiconfigurator's own outputs (default OUT/aic; large: plots, "
                   "generated deployment files)")
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "out/aiconfigurator-check")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        start = time.process_time()
        ours = run_ours(case, args.requests)
        ours_s = time.process_time() - start
        aic = run_aiconfigurator(case, Path(args.aic_dir or out / "aic"), args.reuse)
        row = {"case": asdict(case), "aic": {k: asdict(v) if v else None for k, v in aic.items()},
               "ours": {k: asdict(v) if v else None for k, v in ours.items()},
               "choice_aic": choice(aic), "choice_ours": choice(ours), "ours_cpu_s": round(ours_s, 1)}
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    (out / "aiconfigurator_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
