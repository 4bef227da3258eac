"""Every serving run in BENCHMARKS.md re-simulated, against what it measured.

    python -m benchmarks.sim_vs_measured                 # table + plot + JSON under out/sim-vs-measured
    python -m benchmarks.sim_vs_measured --fit           # refit the serving costs (sessions j, k) first
    python -m benchmarks.sim_vs_measured --fit-launch    # refit only launch_scale (a grid; sessions j, k)

The runs: ``benchmarks/serve.py`` on 2xH200 (2026-11-23, sessions j, k, l: 1 prefill + 1 decode and 2
colocated engines, Llama-3-8B shape, Poisson arrivals at 4-32 req/s). Each run's trace is rebuilt
draw for draw from its saved arguments (``benchmarks/workload.poisson_workload``, seed 0), its design
from serve.py's cluster config (engine limits: 64 sequences / 2048 tokens per step on prefill, 128 on
decode and colocated; the KV handed over after the prefill, not layer by layer), and its metrics as
serve.py computes them: TTFT and pooled token-gap percentiles, output tokens per second of wall time
(first arrival's offset + last token), goodput = requests with TTFT <= 1 s and a p90 token gap <= 50 ms
per second, as serve.py judges a request (the simulator keeps each request's p90 step time:
Simulation(request_gaps=True)).

Two predictions per run:
  calibrated    the H200 profiles measured in the same session (prefill and decode steps:
                prefill-profile-h200-2026-11-23/; the KV handoff: handoff-2xh200-2026-11-23k/) plus the
                serving costs (simulator/serving.py) fitted on sessions j and k; session l is held out.
                Target: within +-10% of the measurement.
  uncalibrated  the roofline with tierserve's stack costs and the uncalibrated slowdown prior
                (simulator/uncertainty.py): p10-p90 band. Target: the measurement inside it.
Writes OUT/sim_vs_measured.json, table.md and sim_vs_measured.png (OUT: --out, else $OUT, else
out/sim-vs-measured).

Sessions m, n, o, p and q (benchmarks/results/sim-fidelity-h200-2026-12-02, -02b, -02c, -02d, -02e: one
colocated H200 at 4-28 req/s, q at 4/22/26/30; m and n each rate twice for 15 s, o, p and q once for 45 s;
five machines, all but m with the prefill graphs) are in by default, held out (``--no-default-sessions``
leaves them out). More
sessions, each held out (never fitted on), as ``--session NAME=DIR``: the folder of one run of
``bash benchmarks/gpu_pending.sh sim-fidelity`` (its results.tgz unpacked): DIR/serve/serve.json
(serve.py, one colocated engine here, each rate run --repeats times on the same trace),
calibrated from that same batch's profile of the machine (and its serving launch scale, measured on
its lowest-rate run: ``serving_launch_scale``; that run is labelled "launch run"): DIR/calibrate/calibration.json
(``tierserve calibrate``: prefill, mixed and lockstep decode steps, device memory) with the decode
steps of DIR/decode-step/decode_step_calibration.json in place of calibrate's where present
(overlapped scheduling, as the serving engine runs them).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.common import out_dir
from benchmarks.workload import WorkloadSpec, poisson_workload
from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.hardware import load_catalog
from simulator.links import LinkTable, fit_link
from simulator.metrics import SimResult
from simulator.models import load_model
from simulator.profiles import Profile, load_profile
from simulator.run import simulate
from simulator.serving import TIERSERVE_STACK, ServingCosts
from simulator.traces.trace import Trace, make_trace
from simulator.uncertainty import UNCALIBRATED, band

RESULTS = Path(__file__).with_name("results")
SESSIONS = {"j": "serve-2xh200-2026-11-23j", "k": "serve-2xh200-2026-11-23k", "l": "serve-2xh200-2026-11-23l"}
FIT_SESSIONS = ("j", "k")
DEFAULT_SESSIONS = {"m": RESULTS / "sim-fidelity-h200-2026-12-02",  # sim-fidelity batches, held out
                    "n": RESULTS / "sim-fidelity-h200-2026-12-02b",
                    "o": RESULTS / "sim-fidelity-h200-2026-12-02c",
                    "p": RESULTS / "sim-fidelity-h200-2026-12-02d",
                    "q": RESULTS / "sim-fidelity-h200-2026-12-02e"}
METRICS = ("ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "throughput_tok_s", "goodput_req_s")
SLO_TTFT_S, SLO_GAP_S = 1.0, 0.05
FITTED = ("prefill.latency_s", "prefill.busy_s", "prefill.handoff_s", "decode.busy_s",
          "colocated.latency_s", "colocated.busy_s", "step_jitter", "step_jitter_s")


@dataclass(frozen=True)
class Run:
    session: str
    mode: str       # disaggregated | colocated
    rate: float
    args: dict      # serve.py's arguments
    measured: dict  # serve.py's point
    profiles: Path | None = None  # a sim-fidelity batch's folder (its profile); None: the 2026-11-23 H200 ones

    @property
    def replicas(self) -> int:
        return int(self.args.get("colocated_replicas", 2))

    @property
    def repeat(self) -> int:
        return int(self.measured.get("repeat", 0))

    @property
    def label(self) -> str:
        design = "1P+1D" if self.mode == "disaggregated" else f"{self.replicas} coloc"
        launch = self.profiles is not None and (launch_run(self.profiles) or {}).get("rate") == self.rate \
            and self.repeat == 0
        return (f"{self.session} {design} {self.rate:g}/s" + (f" #{self.repeat + 1}" if self.repeat else "")
                + (" (launch run)" if launch else ""))


def serve_runs(extra: dict[str, Path] | None = None) -> list[Run]:
    """The 2026-11-23 sessions' runs, and those of each ``extra`` sim-fidelity folder (by session name)."""
    runs = []
    for session, name in SESSIONS.items():
        data = json.loads((RESULTS / name / "serve.json").read_text())
        runs += [Run(session, p["mode"], p["rate"], data["args"], p) for p in data["points"]]
    for session, folder in (extra or {}).items():
        if session in SESSIONS:
            raise SystemExit(f"--session {session}: that name is one of the 2026-11-23 sessions")
        data = batch_serve(folder)
        runs += [Run(session, p["mode"], p["rate"], data["args"], p, folder) for p in data["points"]]
    return runs


def serve_trace(run: Run) -> tuple[Trace, float]:
    """The run's requests (serve.py's workload, draw for draw) and its first arrival's offset."""
    a = run.args
    spec = WorkloadSpec(rate=run.rate, duration_s=a["duration"], prompt_mean=a["prompt_mean"],
                        output_mean=a["output_mean"], max_prompt=a["max_prompt"], max_output=a["max_output"],
                        seed=a["seed"])
    reqs = poisson_workload(spec)
    trace = make_trace(f"serve.py {run.rate:g} req/s", [r.arrival_s for r in reqs],
                       [len(r.prompt_token_ids) for r in reqs], [r.max_tokens for r in reqs])
    if len(trace) != run.measured["requests"]:
        raise RuntimeError(f"{run.label}: rebuilt {len(trace)} requests, the run had {run.measured['requests']}")
    return trace, reqs[0].arrival_s


def serve_design(mode: str, colocated_replicas: int = 2) -> Design:
    """serve.py's cluster: engine defaults (64 sequences, 2048 tokens a step) but 128 sequences on
    decode and colocated engines; the handoff follows the prefill (no layer-wise streaming)."""
    if mode == "disaggregated":
        return Design(prefill=PoolSpec("H200", 1, 1, 64, 2048), decode=PoolSpec("H200", 1, 1, 128, 2048),
                      layerwise_transfer=False)
    return Design(colocated=PoolSpec("H200", colocated_replicas, 1, 128, 2048), layerwise_transfer=False)


def h200_costs(serving: ServingCosts) -> CostModels:
    """The profiles measured on the H200s of the serve runs' session, and ``serving``."""
    catalog = load_catalog()
    profile = RESULTS / "prefill-profile-h200-2026-11-23"
    handoff = load_profile(RESULTS / "handoff-2xh200-2026-11-23k" / "handoff_calibration.json", "H200")
    profiles = (load_profile(profile / "prefill_calibration.json", "H200"),
                load_profile(profile / "decode_step_calibration.json", "H200"))
    link = fit_link([(p.bytes, p.seconds) for p in handoff.links])
    return CostModels(load_model("llama-3-8b"), catalog, profiles, LinkTable(catalog, {("H200", "H200"): link}),
                      serving)


def batch_profile(folder: Path) -> Profile:
    """A sim-fidelity batch's profile of its machine: calibrate's, with the overlapped decode steps of
    decode_step.py in place of calibrate's lockstep ones where that file is there."""
    profile = load_profile(folder / "calibrate" / "calibration.json", "H200")
    overlapped = folder / "decode-step" / "decode_step_calibration.json"
    if not overlapped.is_file():
        return profile
    decode = load_profile(overlapped, "H200").of("decode_step")
    kept = tuple(m for m in profile.measurements if m.op != "decode_step")
    return replace(profile, measurements=kept + tuple(replace(m, model=None) for m in decode))


def batch_costs(folder: Path, serving: ServingCosts) -> CostModels:
    """Costs from a sim-fidelity batch's own profile, and ``serving``."""
    return CostModels(load_model("llama-3-8b"), load_catalog(), (batch_profile(folder),), serving=serving)


def run_costs(run: Run, serving: ServingCosts, cache: dict) -> CostModels:
    """The calibrated costs of ``run``'s machine (cached per profile folder in ``cache``): a sim-fidelity
    batch's own profile, with the serving launch scale its lowest-rate run measured."""
    if run.profiles not in cache:
        if run.profiles is None:
            cache[run.profiles] = h200_costs(serving)
        else:
            scale = serving_launch_scale(run.profiles)
            cache[run.profiles] = batch_costs(run.profiles, serving if scale is None else
                                              replace(serving, launch_scale=round(scale, 3)))
    return cache[run.profiles]


def serving_launch_scale(folder: Path) -> float | None:
    """The serving engine's host launch over the standalone profile's, on a sim-fidelity batch's machine,
    from its lowest-rate run (``launch_run``): that run's eager mixed steps' schedule + prepare + forward
    seconds per step (serve.py's step profile) over the profile's launch time at their mean tokens per
    step. None where the batch has no step profiles."""
    run = launch_run(folder)
    if run is None:
        return None
    mixed = run["kinds"]["mixed"]
    host = (mixed["schedule"] + mixed["prepare"] + mixed["forward"]) / mixed["steps"]
    standalone = batch_costs(folder, replace(TIERSERVE_STACK, launch_scale=1.0)).replica("H200", 1)
    return host / standalone.launch_seconds(round(mixed["tokens"] / mixed["steps"]))


@functools.cache
def batch_serve(folder: Path) -> dict:
    """A sim-fidelity batch's serve.py results (DIR/serve/serve.json), read once."""
    return json.loads((folder / "serve" / "serve.json").read_text())


def launch_run(folder: Path) -> dict | None:
    """The step profile of a sim-fidelity batch's lowest-rate first run (the one its launch scale is
    measured on), or None."""
    runs = [r for r in batch_serve(folder).get("step_profiles", [])
            if r["repeat"] == 0 and r["kinds"].get("mixed", {}).get("steps")]
    return min(runs, key=lambda r: r["rate"]) if runs else None


def roofline_costs(serving: ServingCosts = TIERSERVE_STACK) -> CostModels:
    return CostModels(load_model("llama-3-8b"), load_catalog(), serving=serving)


def observed(result: SimResult, first_arrival: float) -> dict:
    """serve.py's metrics from a simulated run."""
    s = result.samples
    finish = first_arrival + result.duration_s  # serve.py's wall: its start to the last token
    tokens = result.output_tps * result.duration_s
    gaps = s.tpot if s.gap_p90 is None else np.nan_to_num(s.gap_p90, nan=0.0)  # no gaps: good, as serve.py
    good = float(np.sum((s.ttft <= SLO_TTFT_S) & (gaps <= SLO_GAP_S)))
    return {"ttft_p50": float(np.percentile(s.ttft, 50)), "ttft_p99": float(np.percentile(s.ttft, 99)),
            "tbt_p50": result.percentiles["tbt_p50"], "tbt_p99": result.percentiles["tbt_p99"],
            "throughput_tok_s": tokens / finish, "goodput_req_s": good / finish}


def predict(run: Run, costs: CostModels) -> dict:
    trace, first = serve_trace(run)
    return observed(simulate(serve_design(run.mode, run.replicas), trace, costs, request_gaps=True), first)


def serving_decode_ratios(folder: Path) -> list[tuple[float, float]]:
    """(batch, ratio) for each run of a sim-fidelity batch: the serving engine's mean decode step
    (serve.py's step profile, CUDA-graph decode steps: every phase, the device wait included) over the
    batch's own overlapped decode-step profile at that mean batch (decode_step.py, one context)."""
    profile = json.loads((folder / "decode-step" / "decode_step_calibration.json").read_text())
    batches, seconds = zip(*sorted((m["batch"], m["seconds"]) for m in profile["measurements"]
                                   if m["op"] == "decode_step"))
    out = []
    for run in batch_serve(folder).get("step_profiles", []):
        graph = run["kinds"].get("graph")
        if graph and graph["steps"]:
            batch = graph["seqs"] / graph["steps"]
            out.append((batch, graph["ms_per_step"] / 1e3 / float(np.interp(batch, batches, seconds))))
    return out


def decode_batch_slowdown(folders: list[Path]) -> float:
    """ServingCosts.decode_batch_slowdown measured on these batches: the least-squares g of
    ratio = 1 + g * batch through every run's (batch, ratio)."""
    points = [p for folder in folders for p in serving_decode_ratios(folder)]
    if not points:
        raise SystemExit("no step profiles in those sim-fidelity batches (serve.py --step-profiles)")
    return sum(b * (r - 1.0) for b, r in points) / sum(b * b for b, _ in points)


def log_error(pred: dict, meas: dict) -> float:
    return sum(math.log(max(pred[k], 1e-9) / max(meas[k], 1e-9)) ** 2 for k in METRICS)


# ---- fitting the serving costs
def _get(serving: ServingCosts, name: str) -> float:
    path, _, key = name.partition(".")
    return getattr(getattr(serving, path), key) if key else getattr(serving, path)


def _set(serving: ServingCosts, name: str, value: float) -> ServingCosts:
    path, _, key = name.partition(".")
    if not key:
        return replace(serving, **{path: value})
    return replace(serving, **{path: replace(getattr(serving, path), **{key: value})})


def fit(runs: list[Run], start: ServingCosts, rounds: int = 6, log=print) -> ServingCosts:
    """Coordinate search in log space over FITTED, minimising the summed squared log errors of every
    metric of ``runs`` (each parameter moves by x/÷ step; the step shrinks when nothing improves)."""
    def loss(serving: ServingCosts) -> float:
        costs = h200_costs(serving)
        return sum(log_error(predict(r, costs), r.measured) for r in runs)

    best, best_loss = start, loss(start)
    step = 2.0
    for rnd in range(rounds):
        improved = False
        for name in FITTED:
            for factor in (step, 1 / step):
                value = max(_get(best, name), 1e-4) * factor
                trial = _set(best, name, value)
                trial_loss = loss(trial)
                if trial_loss < best_loss - 1e-6:
                    best, best_loss, improved = trial, trial_loss, True
                    break
        log(f"round {rnd}: loss {best_loss:.4f}, step x{step:.3f}: " +
            ", ".join(f"{n}={_get(best, n):.4g}" for n in FITTED))
        if not improved:
            step = math.sqrt(step)
    return replace(best, source=f"fitted by benchmarks/sim_vs_measured.py on sessions {', '.join(FIT_SESSIONS)} "
                                "of the 2xH200 serve runs (2026-11-23)")


def fit_launch(runs: list[Run], start: ServingCosts, points: int = 41, log=print) -> ServingCosts:
    """``launch_scale`` (the serving engine's host launch against the profile's: overlap.py) on a log grid
    over [0.5, 2], the other serving costs held: the one with the least summed squared log error of
    ``runs``' metrics. A grid, not the coordinate search: the TBT p99 it moves is a step function of it
    (a percentile that falls on one side or the other of a set of gaps)."""
    best, best_loss = start, math.inf
    for x in np.geomspace(0.5, 2.0, points):
        trial = replace(start, launch_scale=round(float(x), 3))
        costs = h200_costs(trial)
        trial_loss = sum(log_error(predict(r, costs), r.measured) for r in runs)
        if trial_loss < best_loss - 1e-9:
            best, best_loss = trial, trial_loss
    log(f"launch_scale {best.launch_scale:g}: loss {best_loss:.4f}")
    return best


# ---- the comparison
def compare(runs: list[Run], serving: ServingCosts) -> list[dict]:
    costs: dict = {}
    uncalibrated = roofline_costs(serving)
    rows = []
    for run in runs:
        trace, first = serve_trace(run)
        design = serve_design(run.mode, run.replicas)
        cal = observed(simulate(design, trace, run_costs(run, serving, costs), request_gaps=True), first)
        b = band(design, trace, uncalibrated, prior=UNCALIBRATED)
        unc = [observed(r, first) for r in b.results]
        rows.append({"run": run.label, "session": run.session, "mode": run.mode, "rate": run.rate,
                     "replicas": run.replicas, "repeat": run.repeat, "own_profile": run.profiles is not None,
                     "held_out": run.session not in FIT_SESSIONS, "measured": {k: run.measured[k] for k in METRICS},
                     "calibrated": cal, "uncalibrated_band": {k: sorted(u[k] for u in unc) for k in METRICS}})
    return rows


def within(row: dict, key: str, tolerance: float = 0.10) -> bool:
    return abs(row["calibrated"][key] / row["measured"][key] - 1) <= tolerance


def inside(row: dict, key: str) -> bool:
    lo, _, hi = row["uncalibrated_band"][key]
    return lo <= row["measured"][key] <= hi


def _fmt(key: str, v: float) -> str:
    return f"{v * 1e3:.1f}" if key.startswith(("ttft", "tbt")) else f"{v:.0f}" if key.startswith("through") \
        else f"{v:.2f}"


def markdown(rows: list[dict]) -> str:
    head = ("| run | metric | measured | calibrated (err) | uncalibrated p10 / p50 / p90 |\n"
            "| --- | --- | --- | --- | --- |\n")
    lines = []
    for row in rows:
        for key in METRICS:
            m, c = row["measured"][key], row["calibrated"][key]
            lo, mid, hi = row["uncalibrated_band"][key]
            err = f"{100 * (c / m - 1):+.0f}%" + ("" if within(row, key) else " **x**")
            band_text = (f"{_fmt(key, lo)} / {_fmt(key, mid)} / {_fmt(key, hi)}"
                         + ("" if inside(row, key) else " **out**"))
            lines.append(f"| {row['run']}{' (held out)' if row['held_out'] else ''} | {key} | {_fmt(key, m)} | "
                         f"{_fmt(key, c)} ({err}) | {band_text} |")
    return head + "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> dict:
    out = {}
    for held in (False, True):
        sel = [r for r in rows if r["held_out"] == held]
        name = "held_out" if held else "fit"
        out[name] = {k: {"within_10pct": sum(within(r, k) for r in sel), "inside_band": sum(inside(r, k) for r in sel),
                         "runs": len(sel)} for k in METRICS}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = {"disaggregated": "C0", "colocated": "C1"}
    for ax, key in zip(axes.flat, METRICS):
        for row in rows:
            m, c = row["measured"][key], row["calibrated"][key]
            lo, mid, hi = row["uncalibrated_band"][key]
            color = "C2" if row.get("own_profile") else colors[row["mode"]]
            marker = "s" if row["held_out"] else "o"
            ax.errorbar([m], [mid], yerr=[[mid - lo], [hi - mid]], fmt="none", ecolor=color, alpha=0.25, lw=3)
            ax.plot([m], [c], marker, color=color, ms=6)
        # the axes span the points (bands reaching 0 or far beyond are cut at the edges)
        lo = min(min(r["measured"][key], r["calibrated"][key]) for r in rows) / 1.5
        hi = max(max(r["measured"][key], r["calibrated"][key]) for r in rows) * 1.5
        xs = np.geomspace(lo, hi, 10)
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="k", alpha=0.08)
        ax.set(xscale="log", yscale="log", xlabel=f"measured {key}", ylabel=f"predicted {key}",
               xlim=(lo, hi), ylim=(lo, hi))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(key, fontsize=10)
        ax.grid(True, which="both", alpha=0.2)
    handles = [plt.Line2D([], [], color="C0", marker="o", ls="", label="1P+1D, calibrated (fit sessions)"),
               plt.Line2D([], [], color="C0", marker="s", ls="", label="1P+1D, calibrated (held-out session)"),
               plt.Line2D([], [], color="C1", marker="o", ls="", label="2 colocated, calibrated"),
               *([plt.Line2D([], [], color="C2", marker="s", ls="", label="1 colocated H200 (own profile, held out)")]
                 if any(r.get("own_profile") for r in rows) else []),
               plt.Line2D([], [], color="grey", lw=3, alpha=0.4, label="uncalibrated p10-p90 band"),
               plt.Rectangle((0, 0), 1, 1, color="k", alpha=0.08, label="+-10%")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    sessions = sorted({r["session"] for r in rows} - set(SESSIONS))
    fig.suptitle("serve.py runs, 2xH200 (2026-11-23)" + (f" and sessions {', '.join(sessions)}" if sessions else "")
                 + ": simulated vs measured")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="refit the serving costs on sessions j, k first")
    ap.add_argument("--fit-launch", action="store_true", help="refit only launch_scale on sessions j, k first")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--session", action="append", default=[], metavar="NAME=DIR",
                    help="a sim-fidelity batch's unpacked results (held out; calibrated from its own profile)")
    ap.add_argument("--no-default-sessions", action="store_true",
                    help="leave out sessions m-q (DEFAULT_SESSIONS)")
    args = ap.parse_args()
    out = out_dir(args.out, "sim-vs-measured")
    extra = {} if args.no_default_sessions else dict(DEFAULT_SESSIONS)
    for item in args.session:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder, "serve", "serve.json").is_file():
            ap.error(f"--session {item}: want NAME=DIR with DIR/serve/serve.json")
        extra[name] = Path(folder)
    runs = serve_runs(extra)
    serving = TIERSERVE_STACK
    if args.fit:
        serving = fit([r for r in runs if r.session in FIT_SESSIONS], serving, args.rounds)
    if args.fit_launch:
        serving = fit_launch([r for r in runs if r.session in FIT_SESSIONS], serving)
    if args.fit or args.fit_launch:
        (out / "serving_fit.json").write_text(json.dumps({"serving": serving.as_dict()}, indent=2))
    slowdown = {name: round(decode_batch_slowdown([folder]), 5) for name, folder in extra.items()}
    print(f"decode_batch_slowdown measured per sim-fidelity batch: {slowdown} (the stack's: "
          f"{serving.decode_batch_slowdown}, measured on m and n)")
    rows = compare(runs, serving)
    table = markdown(rows)
    (out / "table.md").write_text(table)
    (out / "sim_vs_measured.json").write_text(json.dumps(
        {"serving": serving.as_dict(), "uncalibrated_prior": UNCALIBRATED.source, "summary": summary(rows),
         "decode_batch_slowdown_measured": slowdown,
         "rows": rows}, indent=2))
    plot(rows, out / "sim_vs_measured.png")
    print(table)
    print(json.dumps(summary(rows), indent=1))
    print(f"wrote {out}/sim_vs_measured.json, table.md, sim_vs_measured.png")


if __name__ == "__main__":
    main()

