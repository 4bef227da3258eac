"""Prefix-aware routing against round-robin on a shared-prefix workload (issue 4's end to end).

    PYTHONPATH=. python benchmarks/prefix_serving.py --shape llama-3-8b --gpus --users 256

Every user's prompt = one shared system prompt (--system-tokens) + the few-shot examples of
its group (--groups groups of --fewshot-tokens) + its own question; they arrive as a Poisson
stream. Two colocated replicas, each with a KV cache that holds the system prompt and only
part of the groups' examples, so where a request lands decides what must be recomputed.
Reported per policy: request and token throughput, TTFT percentiles, prefix-cache hit rate.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import out_dir, write_json
from benchmarks.model_shapes import shape_dir
from benchmarks.serve import drive
from benchmarks.workload import TimedRequest, shared_prefix_prompts
from cluster.bringup.local_cluster import Cluster
from cluster.config import parse_cluster_config


def shared_prefix_workload(args) -> list[TimedRequest]:
    arrivals, prompts, _ = shared_prefix_prompts(args)
    return [TimedRequest(float(t), p, args.output_tokens) for t, p in zip(arrivals, prompts)]


def config(policy: str, model: Path, args) -> dict:
    hardware = {"num_gpus": args.gpus_per_replica, "num_cpus": 2} if args.gpus else {"num_cpus": 0.5}
    engine = {"max_num_seqs": 128, "num_blocks": args.blocks_per_replica}
    return {"name": f"prefix-{policy}", "model": str(model), "load_format": "dummy",
            "dtype": "bfloat16" if args.gpus else "float32", "router": {"policy": policy},
            "pools": {"colocated": {"replicas": args.replicas, "hardware": hardware, "engine": engine}}}


def run_policy(policy: str, model: Path, requests: list[TimedRequest], args) -> dict:
    with Cluster(parse_cluster_config(config(policy, model, args))) as dispatcher:
        loop = asyncio.new_event_loop()
        warm = [TimedRequest(0.0, r.prompt_token_ids[:32], 2) for r in requests[:2]]
        loop.run_until_complete(drive(dispatcher, warm))
        before = dispatcher.stats()
        traces, wall = loop.run_until_complete(drive(dispatcher, requests))
        loop.run_until_complete(dispatcher.view.pools.refresh())
        after = dispatcher.stats()
        profiles = loop.run_until_complete(dispatcher.profiles())
        loop.run_until_complete(dispatcher.aclose())
        loop.close()
    hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
    queries = after.prefix_cache_query_tokens - before.prefix_cache_query_tokens
    return result_row(policy, traces, wall, hits / max(1, queries), profiles)


def result_row(policy: str, traces: list, wall: float, hit_rate: float, profiles: dict) -> dict:
    """One policy's JSON row: throughput, TTFT percentiles, prefix hit rate, step profiles."""
    ttft = np.array([t.ttft for t in traces])
    return {"policy": policy, "requests": len(traces), "wall_s": wall, "req_s": len(traces) / wall,
            "tok_s": sum(t.tokens for t in traces) / wall, "ttft_p50": float(np.percentile(ttft, 50)),
            "ttft_p90": float(np.percentile(ttft, 90)), "ttft_p99": float(np.percentile(ttft, 99)),
            "hit_rate": hit_rate, "step_profiles": profiles}


def print_profiles(profiles: dict[str, dict]) -> None:
    """One line per replica and step kind: steps, mean batch, ms per step and its phases
    (wall / the stepping thread's CPU time: a host phase far above its CPU time waited)."""
    for worker, kinds in profiles.items():
        for kind, k in kinds.items():
            n = max(1, k["steps"])
            cpu = k.get("cpu_seconds", {})
            phases = " ".join(f"{p} {1e3 * sec / n:.2f}/{1e3 * cpu.get(p, 0.0) / n:.2f}"
                              for p, sec in k["seconds"].items())
            print(f"    {worker:12s} {kind:7s} {k['steps']:6d} steps  batch {k['mean_batch']:6.1f}  "
                  f"{k['tokens']:8d} tokens  {k['ms_per_step']:7.2f} ms/step (wall/cpu ms: {phases})")


def run_engine_baseline(model: Path, requests: list[TimedRequest], args) -> dict:
    """The same arrivals into one in-process engine holding every replica's blocks (no Ray, no
    router): what the hardware does for this workload without the serving stack."""
    import torch

    from engine.async_engine import AsyncLLMEngine
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    gpu = args.gpus and torch.cuda.is_available()
    config = EngineConfig(model=str(model), load_format="dummy", dtype="bfloat16" if gpu else "float32",
                          device="cuda" if gpu else "cpu",
                          cache=CacheConfig(num_blocks=args.replicas * args.blocks_per_replica,
                                            enable_prefix_caching=True),
                          scheduler=SchedulerConfig(max_num_seqs=args.replicas * 128))
    engine = AsyncLLMEngine(LLMEngine(config))
    loop = asyncio.new_event_loop()
    try:
        traces, wall = loop.run_until_complete(drive(engine, requests))
        stats, profile = engine.stats(), engine.call(lambda e: e.profile.as_dict())
    finally:
        engine.shutdown()
        loop.close()
    return result_row("one engine", traces, wall, stats.prefix_cache_hits / max(1, stats.prefix_cache_queries),
                      {"engine": profile})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny", "micro"])
    ap.add_argument("--gpus", action="store_true")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--gpus-per-replica", type=float, default=1.0, help="0.5 puts two replicas on one GPU")
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--requests-per-user", type=int, default=1, help="questions each user asks")
    ap.add_argument("--rate", type=float, default=32.0, help="arrivals per second")
    ap.add_argument("--system-tokens", type=int, default=2048)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--fewshot-tokens", type=int, default=1024)
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--blocks-per-replica", type=int, default=800, help="KV cache per replica, in 16-token blocks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine-baseline", action="store_true",
                    help="also run the arrivals into one in-process engine (no serving stack)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot-sweep", nargs="+", type=Path, default=None,
                    help="only plot the ratios of these earlier runs' output directories into --out")
    args = ap.parse_args()
    out = out_dir(args.out, "prefix_serving")
    if args.plot_sweep:
        plot_sweep(args.plot_sweep, out / "sweep.png")
        return
    model = shape_dir(args.shape, Path(tempfile.mkdtemp()))
    requests = shared_prefix_workload(args)
    rows = [run_policy(policy, model, requests, args) for policy in ("prefix-aware", "round-robin")]
    if args.engine_baseline:
        rows.append(run_engine_baseline(model, requests, args))
    for r in rows:
        print(f"{r['policy']:13s} {r['req_s']:7.2f} req/s {r['tok_s']:8.0f} tok/s  TTFT p50/p90/p99 "
              f"{1e3 * r['ttft_p50']:8.1f}/{1e3 * r['ttft_p90']:8.1f}/{1e3 * r['ttft_p99']:8.1f} ms  "
              f"hit rate {100 * r['hit_rate']:5.1f}%")
        print_profiles(r["step_profiles"])
    aware, rr = rows[:2]
    print(f"prefix-aware / round-robin: throughput x{aware['req_s'] / rr['req_s']:.2f}, "
          f"median TTFT x{rr['ttft_p50'] / aware['ttft_p50']:.2f} lower")
    write_json(out / "prefix_serving.json", {"args": vars(args), "rows": rows,
                                             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    _plot(rows, out / "prefix_serving.png")


def plot_sweep(runs: list[Path], path: Path) -> None:
    """Ratios (prefix-aware over round-robin) of several runs' prefix_serving.json, side by side."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels, tput, ttft = [], [], []
    for run in runs:
        data = json.loads((run / "prefix_serving.json").read_text())
        aware, rr = data["rows"][:2]
        labels.append(f"out {data['args']['output_tokens']}\n{data['args']['rate']:g} req/s")
        tput.append(aware["req_s"] / rr["req_s"])
        ttft.append(rr["ttft_p50"] / aware["ttft_p50"])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(runs))
    ax.bar(x - 0.2, tput, 0.4, label="throughput: prefix-aware / round-robin")
    ax.bar(x + 0.2, ttft, 0.4, label="median TTFT: round-robin / prefix-aware")
    ax.set_xticks(x, labels)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylabel("prefix-aware vs round-robin (x)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    names = [r["policy"] for r in rows]
    axes[0].bar(names, [r["req_s"] for r in rows])
    axes[0].set_title("throughput (req/s)")
    axes[1].bar(names, [1e3 * r["ttft_p50"] for r in rows])
    axes[1].set_title("median TTFT (ms)")
    axes[2].bar(names, [100 * r["hit_rate"] for r in rows])
    axes[2].set_title("prefix-cache hit rate (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
