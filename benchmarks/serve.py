"""Serving under load: disaggregated (1 prefill + 1 decode) against colocated (2 engines).

    PYTHONPATH=. python benchmarks/serve.py --shape llama-3-8b --gpus --rates 2 4 8 12 --duration 20

Each mode is a real cluster (Ray actors, Redis, NCCL handoff) driven through its dispatcher
by a Poisson load generator. Reported per request rate: output throughput, TTFT and TBT
percentiles, and goodput (requests/s meeting both SLOs: TTFT <= --slo-ttft and the
request's p90 inter-token gap <= --slo-tbt), plus goodput under each of --tbt-slos (same TTFT
SLO), since the two designs differ most in their inter-token tails.
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


def cluster_config(mode: str, model: Path, gpus: bool, max_len: int) -> dict:
    hardware = {"num_gpus": 1, "num_cpus": 2} if gpus else {"num_cpus": 0.5}
    pools = ({"prefill": {"replicas": 1, "hardware": hardware},
              "decode": {"replicas": 1, "hardware": hardware, "engine": {"max_num_seqs": 128}}}
             if mode == "disaggregated" else
             {"colocated": {"replicas": 2, "hardware": hardware, "engine": {"max_num_seqs": 128}}})
    return {"name": f"bench-{mode[:5]}", "model": str(model), "load_format": "dummy", "max_model_len": max_len,
            "dtype": "bfloat16" if gpus else "float32", "pools": pools}


def run_mode(mode: str, args, model: Path) -> list[Point]:
    cfg = parse_cluster_config(cluster_config(mode, model, args.gpus, args.max_prompt + args.max_output + 16))
    points = []
    with Cluster(cfg) as dispatcher:
        loop = asyncio.new_event_loop()
        warm = poisson_workload(WorkloadSpec(rate=4, duration_s=1, prompt_mean=64, output_mean=8, seed=99))
        loop.run_until_complete(drive(dispatcher, warm))
        for rate in args.rates:
            spec = WorkloadSpec(rate=rate, duration_s=args.duration, prompt_mean=args.prompt_mean,
                                output_mean=args.output_mean, max_prompt=args.max_prompt,
                                max_output=args.max_output, seed=args.seed)
            traces, wall = loop.run_until_complete(drive(dispatcher, poisson_workload(spec)))
            points.append(summarize(mode, rate, traces, wall, args.slo_ttft, args.slo_tbt, tuple(args.tbt_slos)))
            print(_line(points[-1]), flush=True)
        loop.run_until_complete(dispatcher.aclose())
        loop.close()
    return points


def _line(p: Point) -> str:
    return (f"{p.mode:14s} rate {p.rate:5.1f}/s  n={p.requests:4d}  {p.throughput_tok_s:8.0f} tok/s  "
            f"TTFT p50/p99 {1e3 * p.ttft_p50:7.1f}/{1e3 * p.ttft_p99:7.1f} ms  "
            f"TBT p50/p99 {1e3 * p.tbt_p50:6.1f}/{1e3 * p.tbt_p99:6.1f} ms  goodput {p.goodput_req_s:5.2f} req/s"
            + "".join(f"  @{ms}ms {g:5.2f}" for ms, g in p.goodput_by_tbt_slo.items()))


def plot(points: list[Point], path: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    tight = f"{1e3 * min(args.tbt_slos):g}" if args.tbt_slos else None
    for mode in sorted({p.mode for p in points}):
        ps = [p for p in points if p.mode == mode]
        rates = [p.rate for p in ps]
        axes[0].plot(rates, [p.goodput_req_s for p in ps], "o-", label=mode)
        if tight:
            axes[1].plot(rates, [p.goodput_by_tbt_slo[tight] for p in ps], "o-", label=mode)
        axes[2].plot(rates, [1e3 * p.ttft_p99 for p in ps], "o-", label=mode)
        axes[3].plot(rates, [1e3 * p.tbt_p99 for p in ps], "o-", label=mode)
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
    points = [p for mode in args.modes for p in run_mode(mode, args, model)]
    print()
    for p in points:
        print(_line(p))
    write_json(out / "serve.json", {"args": vars(args), "points": points,
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    plot(points, out / "serve.png", args)


if __name__ == "__main__":
    main()
