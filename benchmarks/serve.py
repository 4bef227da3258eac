"""Serving under load: disaggregated (1 prefill + 1 decode) against colocated (2 engines).

    PYTHONPATH=. python benchmarks/serve.py --shape llama-3-8b --gpus --rates 2 4 8 12 --duration 20

Each mode is a real cluster (Ray actors, Redis, NCCL handoff) driven through its dispatcher
by a Poisson load generator. Reported per request rate: output throughput, TTFT and TBT
percentiles, and goodput (requests/s meeting both SLOs: TTFT <= --slo-ttft and the
request's p90 inter-token gap <= --slo-tbt), plus goodput under each of --tbt-slos (same TTFT
SLO), since the two designs differ most in their inter-token tails.

For the simulator's fidelity runs (benchmarks/sim_vs_measured.py) on one GPU:

    PYTHONPATH=. python benchmarks/serve.py --gpus --modes colocated --colocated-replicas 1 \
        --rates 4 10 16 22 --repeats 2 --step-profiles

``--repeats`` runs each rate that many times on the same trace (the repeat noise: same arrivals
and lengths, the prompt's token ids permuted so that the prefix cache holds none of them), and
``--step-profiles`` saves each run's engine step profile (engine/step_profile.py: steps, tokens,
sequences and seconds per phase, by step kind, summed over the engines) in serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import out_dir, write_json
from benchmarks.model_shapes import shape_dir
from benchmarks.workload import TimedRequest, WorkloadSpec, poisson_workload
from cluster.bringup.local_cluster import Cluster
from cluster.config import parse_cluster_config
from engine.sampling_params import SamplingParams
from engine.step_profile import PHASES


@dataclass
class Trace:
    ttft: float
    gaps: list[float]
    tokens: int


@dataclass
class Point:
    mode: str
    rate: float
    requests: int
    throughput_tok_s: float
    ttft_p50: float
    ttft_p99: float
    tbt_p50: float
    tbt_p99: float
    goodput_req_s: float
    goodput_by_tbt_slo: dict[str, float]  # "<ms>" -> req/s meeting TTFT <= --slo-ttft and p90 gap <= ms
    repeat: int = 0                       # which run of this rate (--repeats: the same trace again)


async def one(dispatcher, req: TimedRequest, t0: float) -> Trace:
    await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.perf_counter()))
    start = time.perf_counter()
    times = []
    params = SamplingParams(max_tokens=req.max_tokens, temperature=0, ignore_eos=True)
    async for delta in dispatcher.generate(None, req.prompt_token_ids, params):
        times.extend([time.perf_counter()] * len(delta.new_token_ids))
    return Trace(times[0] - start, list(np.diff(times)), len(times))


async def drive(dispatcher, requests: list[TimedRequest]) -> tuple[list[Trace], float]:
    t0 = time.perf_counter()
    traces = await asyncio.gather(*(one(dispatcher, r, t0) for r in requests))
    return list(traces), time.perf_counter() - t0


def summarize(mode: str, rate: float, traces: list[Trace], wall: float, slo_ttft: float, slo_tbt: float,
              tbt_slos: tuple[float, ...] = ()) -> Point:
    ttft = np.array([t.ttft for t in traces])
    gaps = np.concatenate([t.gaps for t in traces if t.gaps] or [np.zeros(1)])

    def goodput(tbt: float) -> float:
        good = sum(t.ttft <= slo_ttft and (not t.gaps or np.percentile(t.gaps, 90) <= tbt) for t in traces)
        return good / wall
    return Point(mode, rate, len(traces), sum(t.tokens for t in traces) / wall, *np.percentile(ttft, [50, 99]),
                 *np.percentile(gaps, [50, 99]), goodput(slo_tbt),
                 {f"{1e3 * tbt:g}": goodput(tbt) for tbt in tbt_slos})


def cluster_config(mode: str, model: Path, gpus: bool, max_len: int, colocated_replicas: int = 2) -> dict:
    hardware = {"num_gpus": 1, "num_cpus": 2} if gpus else {"num_cpus": 0.5}
    pools = ({"prefill": {"replicas": 1, "hardware": hardware},
              "decode": {"replicas": 1, "hardware": hardware, "engine": {"max_num_seqs": 128}}}
             if mode == "disaggregated" else
             {"colocated": {"replicas": colocated_replicas, "hardware": hardware, "engine": {"max_num_seqs": 128}}})
    return {"name": f"bench-{mode[:5]}", "model": str(model), "load_format": "dummy", "max_model_len": max_len,
            "dtype": "bfloat16" if gpus else "float32", "pools": pools}


def step_totals(profiles: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Engines' step profiles (dispatcher.profiles()) summed by step kind: steps, tokens, seqs, and
    seconds per phase."""
    out: dict[str, dict[str, float]] = {}
    for profile in profiles.values():
        for kind, p in profile.items():
            mine = out.setdefault(kind, {})
            for key, value in (("steps", p["steps"]), ("tokens", p["tokens"]),
                               ("seqs", p["mean_batch"] * p["steps"]), *p["seconds"].items()):
                mine[key] = mine.get(key, 0) + value
    return out


def profile_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict:
    """What the engines' steps did between two ``step_totals``, with ms per step by kind."""
    out = {}
    for kind, values in after.items():
        delta = {k: v - before.get(kind, {}).get(k, 0) for k, v in values.items()}
        if delta["steps"] > 0:
            delta["ms_per_step"] = 1e3 * sum(delta.get(p, 0.0) for p in PHASES) / delta["steps"]
            out[kind] = delta
    return out


def relabeled(req: TimedRequest, repeat: int, vocab: int) -> TimedRequest:
    """The request with its token ids permuted for a repeat (arrival and lengths kept, the prefix cache
    holds nothing of the earlier runs' prompts); repeat 0 as drawn."""
    if not repeat:
        return req
    ids = [3 + (t - 3 + 7919 * repeat) % (vocab - 3) for t in req.prompt_token_ids]
    return TimedRequest(req.arrival_s, ids, req.max_tokens)


def run_mode(mode: str, args, model: Path, step_profiles: list[dict] | None = None) -> list[Point]:
    cfg = parse_cluster_config(cluster_config(mode, model, args.gpus, args.max_prompt + args.max_output + 16,
                                              args.colocated_replicas))
    points = []
    with Cluster(cfg) as dispatcher:
        loop = asyncio.new_event_loop()
        warm = poisson_workload(WorkloadSpec(rate=4, duration_s=1, prompt_mean=64, output_mean=8, seed=99))
        loop.run_until_complete(drive(dispatcher, warm))
        for rate in args.rates:
            spec = WorkloadSpec(rate=rate, duration_s=args.duration, prompt_mean=args.prompt_mean,
                                output_mean=args.output_mean, max_prompt=args.max_prompt,
                                max_output=args.max_output, seed=args.seed)
            for repeat in range(args.repeats):
                if step_profiles is not None:
                    before = step_totals(loop.run_until_complete(dispatcher.profiles()))
                requests = [relabeled(r, repeat, spec.vocab) for r in poisson_workload(spec)]
                traces, wall = loop.run_until_complete(drive(dispatcher, requests))
                point = summarize(mode, rate, traces, wall, args.slo_ttft, args.slo_tbt, tuple(args.tbt_slos))
                point.repeat = repeat
                points.append(point)
                if step_profiles is not None:
                    after = step_totals(loop.run_until_complete(dispatcher.profiles()))
                    step_profiles.append({"mode": mode, "rate": rate, "repeat": repeat,
                                          "kinds": profile_delta(before, after)})
                print(_line(points[-1]), flush=True)
        loop.run_until_complete(dispatcher.aclose())
        loop.close()
    return points


def _line(p: Point) -> str:
    repeat = f" #{p.repeat + 1}" if p.repeat else ""
    return (f"{p.mode:14s} rate {p.rate:5.1f}/s{repeat}  n={p.requests:4d}  {p.throughput_tok_s:8.0f} tok/s  "
            f"TTFT p50/p99 {1e3 * p.ttft_p50:7.1f}/{1e3 * p.ttft_p99:7.1f} ms  "
            f"TBT p50/p99 {1e3 * p.tbt_p50:6.1f}/{1e3 * p.tbt_p99:6.1f} ms  goodput {p.goodput_req_s:5.2f} req/s"
            + "".join(f"  @{ms}ms {g:5.2f}" for ms, g in p.goodput_by_tbt_slo.items()))


def plot(points: list[Point], path: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    tight = f"{1e3 * min(args.tbt_slos):g}" if args.tbt_slos else None
    for mode, repeat in sorted({(p.mode, p.repeat) for p in points}):
        ps = [p for p in points if p.mode == mode and p.repeat == repeat]
        rates = [p.rate for p in ps]
        label = f"{mode} #{repeat + 1}" if repeat else mode
        axes[0].plot(rates, [p.goodput_req_s for p in ps], "o-", label=label)
        if tight:
            axes[1].plot(rates, [p.goodput_by_tbt_slo[tight] for p in ps], "o-", label=label)
        axes[2].plot(rates, [1e3 * p.ttft_p99 for p in ps], "o-", label=label)
        axes[3].plot(rates, [1e3 * p.tbt_p99 for p in ps], "o-", label=label)
    for ax in axes[:2]:
        ax.plot(args.rates, args.rates, "k:", label="offered")
    for ax, title in zip(axes, (f"goodput (TTFT<={args.slo_ttft}s, TBT p90<={1e3 * args.slo_tbt:.0f}ms)",
                                f"goodput (TTFT<={args.slo_ttft}s, TBT p90<={tight}ms)",
                                "TTFT p99 (ms)", "TBT p99 (ms)")):
        ax.set(xlabel="request rate (req/s)", title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny"])
    ap.add_argument("--gpus", action="store_true", help="one GPU per replica")
    ap.add_argument("--modes", nargs="+", default=["disaggregated", "colocated"])
    ap.add_argument("--colocated-replicas", type=int, default=2, help="engines of the colocated mode")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each rate, on the same trace")
    ap.add_argument("--step-profiles", action="store_true",
                    help="save each run's engine step profile (by step kind) in serve.json")
    ap.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8])
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--prompt-mean", type=int, default=1024)
    ap.add_argument("--output-mean", type=int, default=128)
    ap.add_argument("--max-prompt", type=int, default=3072)
    ap.add_argument("--max-output", type=int, default=512)
    ap.add_argument("--slo-ttft", type=float, default=1.0)
    ap.add_argument("--slo-tbt", type=float, default=0.05)
    ap.add_argument("--tbt-slos", type=float, nargs="*", default=[0.01, 0.015, 0.02, 0.03],
                    help="also report goodput under each of these p90 inter-token SLOs (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = out_dir(args.out, "serve")
    model = shape_dir(args.shape, Path(tempfile.mkdtemp()))
    profiles: list[dict] | None = [] if args.step_profiles else None
    points = [p for mode in args.modes for p in run_mode(mode, args, model, profiles)]
    print()
    for p in points:
        print(_line(p))
    extra = {"step_profiles": profiles} if profiles is not None else {}
    write_json(out / "serve.json", {"args": vars(args), "points": points,
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra})
    plot(points, out / "serve.png", args)


if __name__ == "__main__":
    main()
