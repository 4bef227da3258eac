"""Simulator prediction of benchmarks/prefix_serving.py: prefix-aware routing against round-robin.

    PYTHONPATH=. python benchmarks/predict_prefix_serving.py            # the planned GPU run, swept by rate
    PYTHONPATH=. python benchmarks/predict_prefix_serving.py --groups 48 64 96 --blocks 2400 3200 4800
    # the first H100 runs' workload (groups before they were random), to set beside their measurements
    python benchmarks/predict_prefix_serving.py --cyclic-groups --users 128 --groups 16 --blocks 800 --rates 6 16

A PREDICTION by simulator/ (discrete-event, roofline calibrated by the measured H100 decode
step), not a measurement. The workload is prefix_serving.py's generator, draw for draw (same
seed: same arrivals, groups and tokens): users x requests-per-user prompts of a shared system
prompt + the user's few-shot group (drawn at random) + a question; the trace's block hashes are
chained hashes of the 16-token blocks of those tokens, as the engine's prefix cache keys them.

Modeled as the planned run: two colocated Llama-3-8B bf16 replicas, max_num_seqs 128, token
budget 2048 (the engine's default), --blocks KV blocks each, prefix caching on, no shared-prefix
decode kernel (the engine takes it on CUDA only above 1M saved tokens per layer). KV is paged
(Design.paged_kv): cached blocks are stored once and share the replica's blocks with the
running requests, as the engine's block pool does, and allocated on demand (the most recently
admitted request preempted when a step does not fit). The simulator sizes KV from device memory,
so each replica's device is the catalog's H100 with memory_gib chosen to leave exactly --blocks
blocks after weights and activations. --gpu-share shared (default, as the planned
--gpus-per-replica 0.5): each replica gets half an H100 (half its FLOP/s, bandwidth and the
measured step times doubled), a fluid share: the real processes time-slice the GPU, and here
neither gets the whole GPU while the other idles. --gpu-share separate: one H100 per replica.

Policies: prefix_aware and round_robin (the simulator's); cluster_rule mirrors the cluster's
picker (cluster/pool_handles.py: least uncached tokens while balanced, least loaded when one
replica's load exceeds the other's by 1.5x + 16K tokens or its requests in flight by 1.5x + 8).
Writes predict_prefix_serving.json and .png under --out (default $OUT, else out/predict_prefix_serving).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.workload import shared_prefix_prompts
from cluster.pool_handles import DECODE_LOAD_WEIGHT, pick
from simulator.costs import CostModels, activation_bytes, kv_capacity_tokens
from simulator.design import Design, PoolSpec
from simulator.hardware import GIB, load_catalog
from simulator.metrics import summarize
from simulator.models import load_model
from simulator.profiles import Profile, load_profile
from simulator.simulation import Simulation
from simulator.traces.trace import Trace, make_trace

ROOT = Path(__file__).resolve().parent.parent
DECODE_PROFILE = ROOT / "benchmarks/results/decode-step-h100-2026-11-23b/decode_step_calibration.json"
POLICIES = ("prefix_aware", "round_robin", "cluster_rule")
BLOCK = 16
MAX_NUM_SEQS, MAX_BATCHED_TOKENS = 128, 2048  # prefix_serving.py's engine settings (budget: engine default)
GOALS = {"throughput": 3.0, "ttft_p50": 5.0}


@dataclass(frozen=True)
class Workload:
    users: int = 256
    requests_per_user: int = 4
    rate: float = 24.0
    system_tokens: int = 2048
    groups: int = 64
    fewshot_tokens: int = 1024
    question_tokens: int = 64
    output_tokens: int = 64
    seed: int = 0
    cyclic_groups: bool = False  # the generator before 2026-11-23 12:47: user i -> group i % groups, one request each

    @property
    def requests(self) -> int:
        return self.users * (1 if self.cyclic_groups else self.requests_per_user)


def block_hashes(tokens: list[int], block: int = BLOCK) -> tuple[int, ...]:
    """Chained hashes of the prompt's blocks (the last one may be partial), as the engine keys its cache."""
    out, parent = [], 0
    for i in range(0, len(tokens), block):
        parent = hash((parent, tuple(tokens[i:i + block])))
        out.append(parent)
    return tuple(out)


def build_trace(w: Workload, block: int = BLOCK) -> Trace:
    arrivals, prompts, _ = shared_prefix_prompts(w)
    return make_trace(f"prefix_serving(users={w.users}x{w.requests_per_user}, groups={w.groups}, rate={w.rate:g})",
                      arrivals.tolist(), [len(p) for p in prompts], [w.output_tokens] * len(prompts),
                      [block_hashes(p, block) for p in prompts], block)


class ClusterRule:
    """The cluster's colocated picker (cluster/pool_handles.py pick_colocated) over simulated replicas.
    Work: prompt tokens past the replica's (predicted) cached prefix; load: uncached tokens routed
    there and not yet prefilled + 0.5 x KV tokens held; in flight: routed and not finished. A
    replica is predicted to hold a prompt's blocks from the moment the prompt is sent there (the
    router's prediction) and then as long as its cache does."""

    def __init__(self) -> None:
        self.sent: dict[int, deque] = {}       # replica id -> (request, uncached tokens) not finished
        self.predicted: dict[int, Counter] = {}  # replica id -> block hashes of prompts sent, not prefilled

    def _state(self, r) -> tuple[int, int]:
        """Prune finished requests; (uncached tokens not yet prefilled, requests in flight)."""
        sent, predicted = self.sent.setdefault(id(r), deque()), self.predicted.setdefault(id(r), Counter())
        pending, live = 0, deque()
        for req, uncached, counted in sent:
            if counted and req.ttft_at >= 0:
                predicted.subtract(req.hash_ids)
                counted = False
            if req.finish_at < 0:
                live.append((req, uncached, counted))
                pending += uncached if req.ttft_at < 0 else 0
        self.sent[id(r)] = live
        return pending, len(live)

    def _matched(self, r, req) -> int:
        blocks, predicted, n = r.cache.blocks, self.predicted[id(r)], 0
        for h in req.hash_ids:
            if h not in blocks and predicted[h] <= 0:
                break
            n += 1
        return n

    def pick_prefill(self, replicas, req):
        state = {id(r): self._state(r) for r in replicas}
        work = {id(r): max(0, req.prompt - self._matched(r, req) * r.block_tokens) for r in replicas}
        chosen = pick(replicas, work=lambda r: work[id(r)],
                      load=lambda r: state[id(r)][0] + DECODE_LOAD_WEIGHT * self._held(r),
                      inflight=lambda r: state[id(r)][1])
        self.sent[id(chosen)].append((req, work[id(chosen)], True))
        self.predicted[id(chosen)].update(req.hash_ids)
        return chosen

    @staticmethod
    def _held(r) -> int:
        """KV tokens in use (the engine's used blocks; idle cached ones are free): on demand, what
        Replica.in_use counts (reservations, running contexts, cached blocks in use once);
        reserved, the reservations (prompt + output less cached blocks) and the pinned blocks."""
        if r.on_demand:
            return r.in_use()
        pins = len(r.cache.pins) * r.block_tokens if hasattr(r.cache, "pins") else 0
        return r.kv_used + pins

    def pick_decode(self, replicas):
        raise NotImplementedError("the cluster rule is modeled for colocated pools")


def hardware_catalog(blocks: int, gpu_share: str, model_name: str = "llama-3-8b"):
    """The shipped catalog plus H100-kv: an H100 (halved for a shared GPU) whose memory_gib leaves
    exactly ``blocks`` KV blocks of 16 tokens after weights and activations."""
    catalog, model = load_catalog(), load_model(model_name)
    h100 = catalog["H100"]
    fixed = model.weight_bytes + activation_bytes(model, 1, MAX_BATCHED_TOKENS)
    kv = blocks * BLOCK * model.kv_bytes_per_token
    memory_gib = (fixed + kv + model.kv_bytes_per_token / 2) / (GIB * h100.memory_fraction)
    half = 0.5 if gpu_share == "shared" else 1.0
    spec = replace(h100, name="H100-kv", memory_gib=memory_gib, peak_bf16_tflops=h100.peak_bf16_tflops * half,
                   memory_bandwidth_gbs=h100.memory_bandwidth_gbs * half, usd_per_hour=h100.usd_per_hour * half,
                   watts=h100.watts * half)
    assert kv_capacity_tokens(model, spec, 1, MAX_BATCHED_TOKENS) == blocks * BLOCK
    return replace(catalog, hardware={**catalog.hardware, "H100-kv": spec}), model


def scaled_profile(path: Path, factor: float) -> Profile:
    """A measured H100 profile for H100-kv: every time x factor (2 on a shared GPU)."""
    p = load_profile(path, "H100-kv")
    return replace(p, measurements=tuple(replace(m, seconds=m.seconds * factor) for m in p.measurements))


def cost_models(blocks: int, gpu_share: str, profiles: list[Path]) -> CostModels:
    catalog, model = hardware_catalog(blocks, gpu_share)
    factor = 2.0 if gpu_share == "shared" else 1.0
    return CostModels(model, catalog, tuple(scaled_profile(p, factor) for p in profiles))


def simulate_policy(trace: Trace, costs: CostModels, policy: str, paged_kv: bool = True,
                    shared_prefix: bool = False, replicas: int = 2) -> dict:
    pool = PoolSpec("H100-kv", replicas, 1, MAX_NUM_SEQS, MAX_BATCHED_TOKENS)
    design = Design(colocated=pool, router="prefix_aware" if policy == "cluster_rule" else policy,
                    shared_prefix_attention=shared_prefix, paged_kv=paged_kv)
    sim = Simulation(design, costs, trace)
    if policy == "cluster_rule":  # the simulator has no hook for outside routers: swap it in before run()
        sim.router = ClusterRule()
    record = sim.run()
    result = summarize(record, None, costs.catalog)
    done = [r for r in record.requests if r.finish_at >= 0]
    per_replica = Counter(id(r.prefill_replica) for r in done)
    return {"policy": policy, "completed": result.completed, "rejected": result.rejected,
            "makespan_s": result.duration_s, "req_s": result.throughput_rps, "tok_s": result.output_tps,
            "ttft_p50": result.percentiles["ttft_p50"], "ttft_p90": result.percentiles["ttft_p90"],
            "ttft_p99": result.percentiles["ttft_p99"], "hit_rate": result.prefix_hit_rate,
            "prefill_tokens": int(sum(r.prompt - r.cached for r in done)),
            "utilization": result.utilization.get("colocated", 0.0),
            "split": sorted(per_replica.values(), reverse=True)}


def regime(w: Workload, blocks: int, replicas: int = 2) -> dict:
    """Does a replica's KV hold the system prompt, its share of the groups (1 / replicas) and
    max_num_seqs running requests' own blocks (question + output), but not the system prompt and
    all the groups?"""
    system, group = -(-w.system_tokens // BLOCK), -(-w.fewshot_tokens // BLOCK)
    running = MAX_NUM_SEQS * -(-(w.question_tokens + w.output_tokens) // BLOCK)
    share = system + -(-w.groups // replicas) * group + running
    return {"share_blocks": share, "all_blocks": system + w.groups * group,
            "ok": share <= blocks < system + w.groups * group}


def check_replicas(replicas: int, gpu_share: str) -> None:
    if replicas < 1 or (gpu_share == "shared" and replicas != 2):
        raise ValueError(f"--replicas must be >= 1, and --gpu-share shared models two replicas on one H100: "
                         f"with {replicas} replicas use --gpu-share separate (one H100 each)")


def run_config(w: Workload, blocks: int, gpu_share: str, profiles: list[Path], policies=POLICIES,
               paged_kv: bool = True, shared_prefix: bool = False, replicas: int = 2) -> dict:
    check_replicas(replicas, gpu_share)
    trace = build_trace(w)
    costs = cost_models(blocks, gpu_share, profiles)
    rows = {p: simulate_policy(trace, costs, p, paged_kv, shared_prefix, replicas) for p in policies}
    out = {"workload": w.__dict__, "blocks": blocks, "gpu_share": gpu_share, "replicas": replicas,
           "regime": regime(w, blocks, replicas), "rows": rows}
    rr = rows.get("round_robin")
    if rr:
        out["ratios"] = {p: {"throughput": r["req_s"] / rr["req_s"], "ttft_p50": rr["ttft_p50"] / r["ttft_p50"]}
                         for p, r in rows.items() if p != "round_robin"}
    return out


def gpu_minutes(config: dict, startup_s: float = 120.0) -> float:
    """Rough GPU time of prefix_serving.py at this config: per policy, its makespan + start-up."""
    return sum(r["makespan_s"] + startup_s for p, r in config["rows"].items()
               if p in ("prefix_aware", "round_robin")) / 60


def print_config(c: dict) -> None:
    w = c["workload"]
    print(f"groups {w['groups']:3d} blocks {c['blocks']:5d} rate {w['rate']:5.1f} seed {w['seed']} "
          f"({c.get('replicas', 2)} replicas, {c['gpu_share']} GPU"
          f"{', regime ok' if c['regime']['ok'] else ', OUT OF REGIME'})")
    for p, r in c["rows"].items():
        ratio = c.get("ratios", {}).get(p)
        extra = f"  x{ratio['throughput']:.2f} thr, x{ratio['ttft_p50']:.2f} lower TTFT p50" if ratio else ""
        print(f"  {p:13s} {r['req_s']:6.2f} req/s  TTFT p50/p90/p99 {1e3 * r['ttft_p50']:8.1f}/"
              f"{1e3 * r['ttft_p90']:8.1f}/{1e3 * r['ttft_p99']:8.1f} ms  hit {100 * r['hit_rate']:5.1f}%  "
              f"util {100 * r['utilization']:5.1f}%  split {r['split']}{extra}")


def settings(configs: list[dict], policy: str) -> list[dict]:
    """Per setting (groups, blocks, rate): the ratios of ``policy`` over round-robin, median and
    range over the seeds run."""
    by: dict[tuple, list[dict]] = {}
    for c in configs:
        if policy in c.get("ratios", {}):
            by.setdefault((c["workload"]["groups"], c["blocks"], c["workload"]["rate"]), []).append(c)
    out = []
    for (groups, blocks, rate), cs in sorted(by.items()):
        thr = [c["ratios"][policy]["throughput"] for c in cs]
        ttft = [c["ratios"][policy]["ttft_p50"] for c in cs]
        out.append({"policy": policy, "groups": groups, "blocks": blocks, "rate": rate, "seeds": len(cs),
                    "regime_ok": cs[0]["regime"]["ok"], "throughput": float(np.median(thr)),
                    "throughput_range": [min(thr), max(thr)], "ttft_p50": float(np.median(ttft)),
                    "ttft_p50_range": [min(ttft), max(ttft)],
                    "gpu_minutes": float(np.median([c["gpu_minutes"] for c in cs]))})
    return out


def capacities(configs: list[dict]) -> dict[tuple[int, int], dict[str, float]]:
    """Per (groups, blocks): each policy's capacity, its highest throughput over the rates run
    (median over seeds; a capacity only where the highest rate run overloads it)."""
    by: dict[tuple, dict[int, dict[str, float]]] = {}
    for c in configs:
        caps = by.setdefault((c["workload"]["groups"], c["blocks"]), {}).setdefault(c["workload"]["seed"], {})
        for p, r in c["rows"].items():
            caps[p] = max(caps.get(p, 0.0), r["req_s"])
    return {k: {p: float(np.median([caps[p] for caps in seeds.values()])) for p in next(iter(seeds.values()))}
            for k, seeds in by.items()}


def add_margins(rows: list[dict], caps: dict[tuple[int, int], dict[str, float]]) -> None:
    """Speed margin of each setting: by what factor the real cluster may be slower (lower bound) or
    faster (upper bound) than modeled before the rate leaves the window between round-robin's
    capacity and this policy's (where the TTFT ratio is large)."""
    for r in rows:
        cap = caps[(r["groups"], r["blocks"])]
        r["speed_window"] = [r["rate"] / cap[r["policy"]], r["rate"] / cap["round_robin"]]


def recommended(rows: list[dict]) -> dict | None:
    """The in-regime setting meeting the TTFT goal that tolerates the largest speed error of the
    model either way (the rate at the geometric middle of the window)."""
    ok = [r for r in rows if r["regime_ok"] and r["ttft_p50"] >= GOALS["ttft_p50"]]
    return max(ok, key=lambda r: min(1 / r["speed_window"][0], r["speed_window"][1])) if ok else None


def best(rows: list[dict]) -> dict | None:
    """The in-regime setting with the largest throughput ratio among those meeting the TTFT goal
    (median over seeds); if none does, the one closest to both goals (largest min(ratio / goal))."""
    ok = [r for r in rows if r["regime_ok"]]
    meets = [r for r in ok if r["ttft_p50"] >= GOALS["ttft_p50"]]
    if meets:
        return max(meets, key=lambda r: (r["throughput"], r["ttft_p50"]))
    return max(ok, key=lambda r: min(r[k] / GOALS[k] for k in GOALS)) if ok else None


def plot(configs: list[dict], summary: dict, path: Path, policies: tuple[str, ...]) -> None:
    """Ratios over round-robin (median over seeds, bars: range) and throughputs, against the rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    styles = dict(zip(POLICIES, ("-o", ":^", "--s")))
    for p, entry in summary.items():
        by: dict[tuple, list[dict]] = {}
        for r in entry["settings"]:
            by.setdefault((r["groups"], r["blocks"]), []).append(r)
        for (groups, blocks), rows in sorted(by.items()):
            rates = [r["rate"] for r in rows]
            for ax, key in ((axes[0], "throughput"), (axes[1], "ttft_p50")):
                mid = np.array([r[key] for r in rows])
                lo, hi = np.array([r[key + "_range"] for r in rows]).T
                ax.errorbar(rates, mid, yerr=[mid - lo, hi - mid], fmt=styles[p], markersize=3, capsize=2,
                            label=f"{p}, {groups} groups, {blocks} blocks")
    by_rate: dict[tuple, list[float]] = {}
    for c in configs:
        for p, r in c["rows"].items():
            by_rate.setdefault((p, c["workload"]["groups"], c["blocks"], c["workload"]["rate"]), []).append(r["req_s"])
    for p, groups, blocks in sorted({k[:3] for k in by_rate}):
        rates = sorted(k[3] for k in by_rate if k[:3] == (p, groups, blocks))
        axes[2].plot(rates, [np.median(by_rate[(p, groups, blocks, x)]) for x in rates], styles[p], markersize=3,
                     label=f"{p}, {groups} groups, {blocks} blocks")
    for ax, key, title in ((axes[0], "throughput", "throughput, policy / round-robin"),
                           (axes[1], "ttft_p50", "median TTFT, round-robin / policy")):
        ax.axhline(GOALS[key], color="red", linewidth=0.8, linestyle=":", label=f"goal {GOALS[key]:g}x")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_title(f"{title} (predicted)", fontsize=10)
        ax.set_xlabel("arrival rate (req/s)")
        ax.legend(fontsize=6)
    axes[1].set_yscale("log")
    axes[2].set_title("throughput (req/s, predicted)", fontsize=10)
    axes[2].set_xlabel("arrival rate (req/s)")
    axes[2].legend(fontsize=6)
    fig.suptitle("SIMULATOR PREDICTION, not a measurement: benchmarks/prefix_serving.py, 2 colocated "
                 "Llama-3-8B replicas (median over seeds; bars: range)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64])
    ap.add_argument("--groups", type=int, nargs="+", default=[64])
    ap.add_argument("--blocks", type=int, nargs="+", default=[3200], help="KV blocks of 16 tokens per replica")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="workload seeds (0 is the GPU run's)")
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--requests-per-user", type=int, default=4)
    ap.add_argument("--system-tokens", type=int, default=2048)
    ap.add_argument("--fewshot-tokens", type=int, default=1024)
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--cyclic-groups", action="store_true",
                    help="the pre-fix generator (user i -> group i %% groups, one request per user)")
    ap.add_argument("--replicas", type=int, default=2, help="colocated replicas (other than 2: --gpu-share separate)")
    ap.add_argument("--gpu-share", choices=("shared", "separate"), default="shared",
                    help="shared: both replicas on one H100 (fluid halves); separate: one H100 each")
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    ap.add_argument("--profile", type=Path, action="append", default=None,
                    help=f"H100 calibration profile(s) (default {DECODE_PROFILE.relative_to(ROOT)})")
    ap.add_argument("--roofline", action="store_true", help="no profile: the uncalibrated roofline")
    ap.add_argument("--no-paged-kv", action="store_true",
                    help="KV not paged: each request holds its whole context, the cache is as large as the memory")
    ap.add_argument("--shared-prefix", action="store_true", help="model the shared-prefix decode kernel too")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    try:
        check_replicas(args.replicas, args.gpu_share)
    except ValueError as e:
        ap.error(str(e))
    out = args.out or Path(os.environ.get("OUT") or "out") / "predict_prefix_serving"
    out.mkdir(parents=True, exist_ok=True)
    profiles = [] if args.roofline else (args.profile or [DECODE_PROFILE])
    policies = tuple(args.policies if "round_robin" in args.policies else ["round_robin", *args.policies])
    configs = []
    for groups in args.groups:
        for blocks in args.blocks:
            for seed in args.seeds:
                for rate in args.rates:
                    w = Workload(args.users, args.requests_per_user, rate, args.system_tokens, groups,
                                 args.fewshot_tokens, args.question_tokens, args.output_tokens, seed,
                                 args.cyclic_groups)
                    c = run_config(w, blocks, args.gpu_share, profiles, policies, not args.no_paged_kv,
                                   args.shared_prefix, args.replicas)
                    c["gpu_minutes"] = gpu_minutes(c)
                    print_config(c)
                    configs.append(c)
    summary, caps = {}, capacities(configs)
    print("capacities (req/s, highest throughput over the rates run): "
          + "; ".join(f"{g} groups, {b} blocks: " + ", ".join(f"{p} {v:.1f}" for p, v in cap.items())
                      for (g, b), cap in caps.items()))
    for p in policies:
        if p == "round_robin":
            continue
        rows = settings(configs, p)
        add_margins(rows, caps)
        planned = [r for r in rows if (r["groups"], r["blocks"], r["rate"]) == (64, 3200, 24.0)]
        summary[p] = {"planned": planned[0] if planned else None, "best": best(rows),
                      "recommended": recommended(rows), "settings": rows}
        for name in ("planned", "best", "recommended"):
            if r := summary[p][name]:
                (lo, hi), (t0, t1), (f0, f1) = r["speed_window"], r["throughput_range"], r["ttft_p50_range"]
                print(f"{p} {name}: groups {r['groups']}, blocks {r['blocks']}, rate {r['rate']:g}: "
                      f"x{r['throughput']:.2f} throughput ({t0:.2f}-{t1:.2f}), x{r['ttft_p50']:.2f} lower median "
                      f"TTFT ({f0:.2f}-{f1:.2f}) over {r['seeds']} seed(s); in the window if the cluster runs at "
                      f"{lo:.2f}-{hi:.2f}x the modeled speed; ~{r['gpu_minutes']:.1f} GPU min for the two policies")
    meta = {"what": "SIMULATOR PREDICTION, not a measurement", "gpu_share": args.gpu_share,
            "replicas": args.replicas,
            "profiles": [str(p) for p in profiles], "paged_kv": not args.no_paged_kv,
            "shared_prefix": args.shared_prefix,
            "capacities": {f"{g} groups, {b} blocks": cap for (g, b), cap in caps.items()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "predict_prefix_serving.json").write_text(json.dumps({**meta, "summary": summary, "configs": configs},
                                                                indent=1))
    plot(configs, summary, out / "predict_prefix_serving.png", policies)
    print(f"wrote {out}/predict_prefix_serving.json and .png")


if __name__ == "__main__":
    main()
