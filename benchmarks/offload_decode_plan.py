"""The plan part of benchmarks/offload_decode.py: measured curves -> a simulator profile -> tokens per dollar.

From a results.json of the link and step parts it writes ``profile.json`` (simulator/profiles.py ops on the
compute device: offload_dense, offload_link, offload_step, attention, decode_step), then finds, for a
long-context trace (4K+ prompts) under a TBT SLO, the cheapest design of each family the simulator knows,
calibrated by that profile: colocated and disaggregated on the compute GPU, and offloaded with attention
on the compute GPU's kind and on each other --attention-tiers kind. Tokens per dollar = output tokens per
second / ($ per second). Without results it plans with the roofline alone (marked uncalibrated).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from simulator.costs import CostModels, min_tp
from simulator.hardware import load_catalog
from simulator.models import load_model
from simulator.planner import Family, Planner, PlanOptions
from simulator.profiles import load_profile
from simulator.search import search_family
from simulator.slo import parse_slo
from simulator.traces.load import load_trace

TRACE = "synthetic:n=1500,rate={rate},prompt=lognormal:4096:0.3,output=lognormal:256:0.5,seed=3"
SLO = "ttft_p99=5,tbt_p99=60ms"


def write_profile(results: dict, device: str, path: Path) -> Path:
    rows = results["rows"]
    layers = 32
    ms = []
    for r in rows:
        if r["part"] == "link":
            ms.append({"op": "offload_link", "batch": r["batch"], "seconds": r["per_layer_s"] * layers})
        if r["part"] == "step" and r.get("fits"):
            ms.append({"op": "offload_step", "batch": r["batch"], "context": r["context"] + 1,
                       "micro_batches": r["m"], "seconds": r["step_s"]})
            if r["m"] == 1:
                ms.append({"op": "offload_dense", "batch": r["batch"], "seconds": r["dense_s"]})
                ms.append({"op": "attention", "batch": r["batch"], "context": r["context"] + 1, "layers": layers,
                           "seconds": r["attention_s"]})
                if r.get("local_step_s"):
                    ms.append({"op": "decode_step", "batch": r["batch"], "context": r["context"] + 1,
                               "seconds": r["local_step_s"]})
    path.write_text(json.dumps({"device": device, "tp": 1, "model": "llama-3-8b", "measurements": ms}, indent=1))
    return path


def plan_rows(results_path: str, out: Path, compute: str = "H200", attention_tiers: tuple[str, ...] = ("H20",),
              rates: tuple[float, ...] = (8.0, 16.0, 32.0)) -> list[dict]:
    catalog, model = load_catalog(), load_model("llama-3-8b")
    profiles, calibrated = (), Path(results_path).is_file()
    if calibrated:
        results = json.loads(Path(results_path).read_text())
        profiles = (load_profile(write_profile(results, compute, out / "profile.json")),)
    costs = CostModels(model, catalog, profiles)
    slo = parse_slo(SLO)
    rows = []
    for rate in rates:
        trace = load_trace(TRACE.format(rate=rate))
        planner = Planner(trace, costs, slo, PlanOptions(hardware=(compute, *attention_tiers), max_replicas=16))
        tp = min_tp(model, catalog[compute], 8192, int((trace.prompt_tokens + trace.output_tokens).max()))
        families = [Family("colocated", (compute,), (tp,)), Family("disaggregated", (compute, compute), (tp, tp))]
        families += [Family("offload", (compute, a), (tp, tp, 1)) for a in (compute, *attention_tiers)]
        for fam in families:
            cand = search_family(planner, fam, math.inf, trace)
            row = {"part": "plan", "rate": rate, "design": fam.kind, "tiers": "/".join(fam.tiers),
                   "calibrated": calibrated, "slo": SLO}
            if cand is not None:
                r = cand.result
                dollars_per_s = cand.design.cost_per_hour(catalog) / 3600
                row.update(label=cand.design.label(), cost_per_hour=cand.design.cost_per_hour(catalog),
                           output_tps=r.output_tps, tokens_per_dollar=r.output_tps / dollars_per_s,
                           tbt_p99=r.percentiles["tbt_p99"])
            rows.append(row)
            print(f"plan rate={rate}: {fam.kind} {'/'.join(fam.tiers)}: "
                  + (f"{row['label']} ${row['cost_per_hour']:.2f}/h, {row['tokens_per_dollar']:.0f} tokens/$"
                     if cand is not None else "no design meets the SLO"))
        found = [r for r in rows if r["rate"] == rate and "tokens_per_dollar" in r]
        best_other = max((r["tokens_per_dollar"] for r in found if r["design"] != "offload"), default=None)
        for r in found:
            if r["design"] == "offload" and best_other:
                r["vs_best_other"] = r["tokens_per_dollar"] / best_other
    plot(rows, out / "tokens-per-dollar.png")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    found = [r for r in rows if "tokens_per_dollar" in r]
    if not found:
        return
    rates = sorted({r["rate"] for r in found})
    names = sorted({f"{r['design']} {r['tiers']}" for r in found})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [next((r["tokens_per_dollar"] for r in found if r["rate"] == rate
                    and f"{r['design']} {r['tiers']}" == name), 0) for rate in rates]
        ax.bar([j + i * width for j in range(len(rates))], ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rates))], [f"{r:g} req/s" for r in rates])
    ax.set_ylabel("output tokens per $")
    ax.set_title(f"Llama-3-8B, 4K prompts, {SLO}" + ("" if found[0]["calibrated"] else " (roofline, uncalibrated)"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
