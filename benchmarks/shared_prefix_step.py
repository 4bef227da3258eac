"""Whole-model decode throughput with a shared prefix: Hydragen's end-to-end figure.

    PYTHONPATH=. python -m benchmarks.shared_prefix_step --shape llama-3-8b --device cuda --out DIR

For each prefix length P, B requests = one shared prefix of P tokens + their own question
(--question-tokens) decode together in one engine with prefix caching (the prefix is
prefilled once first, so every request maps the same physical blocks). Timed: engine steps
in which all B requests decode, with the shared-prefix attention path on (every step takes
it) and off (plain paged decode, CUDA graphs). Reported: decode tokens/s per prefix length,
and the drop from the shortest to the longest prefix — the quantity Hydragen reports as
"throughput drops by under 15% from a 1K to a 16K prefix". Weights are random (dummy),
loaded once and shared by every engine of the run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.common import machine_info, out_dir, write_json
from benchmarks.model_shapes import shape_dir
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, parse_dtype
from engine.llm_engine import LLMEngine
from engine.model.loader import load_model
from engine.sampling_params import SamplingParams


def engine_for(model_dir: Path, model, device: str, dtype: str, batch: int, prefix: int, args,
               shared: bool) -> LLMEngine:
    per_request = -(-(args.question_tokens + new_tokens(args)) // 16) + 1
    blocks = prefix // 16 + 2 + batch * per_request
    return LLMEngine(EngineConfig(
        model=str(model_dir), dtype=dtype, device=device, detokenize=False, load_format="dummy",
        shared_prefix_attention=shared, shared_prefix_min_tokens=0 if shared else None,
        async_scheduling=False if args.lockstep else None,
        cache=CacheConfig(num_blocks=blocks, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=max(8192, prefix + 16),
                                  max_model_len=prefix + args.question_tokens + new_tokens(args) + 16,
                                  max_admission_delay_s=0.0)), model=model)


def new_tokens(args) -> int:
    # requests are admitted over several prefill steps (the token budget), so the first ones
    # are a few tokens ahead when timing starts: the margin keeps all of them running through it
    return args.warmup_steps + args.steps + 16


def decode_rate(engine: LLMEngine, batch: int, prefix: int, args, rng: np.random.Generator) -> dict:
    """Decode tokens/s of ``batch`` requests sharing a ``prefix``-token prompt head."""
    vocab = engine.model_config.vocab_size
    head = rng.integers(3, vocab - 1, prefix).tolist()
    new = new_tokens(args)
    engine.generate([head + [7]], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))  # cache the prefix
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"r{i}", head + rng.integers(3, vocab - 1, args.question_tokens).tolist(), params)
    while any(len(r.output_token_ids) == 0 for r in engine.requests.values()):  # prefill the questions
        engine.step()
    times = []
    for i in range(args.warmup_steps + args.steps):
        t0 = time.perf_counter()
        out = engine.step()
        if len(out) != batch and i >= args.warmup_steps:  # overlapped: the first returns the last prefill's
            raise RuntimeError(f"a timed step decoded {len(out)} of {batch} requests")
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - t0)
    if args.trace:
        print_trace(engine, f"prefix {prefix}, {'shared' if engine.config.shared_prefix_attention else 'plain'} path")
    for request_id in list(engine.requests):
        engine.abort_request(request_id)
    kinds = engine.profile.as_dict()  # steps and seconds per phase, by step kind
    step = statistics.median(times)
    return {"prefix": prefix, "batch": batch, "step_s": step, "tok_s": batch / step, "step_kinds": kinds,
            "cached_tokens": engine.kv.prefix_hits, "free_blocks_after": engine.kv.num_free_blocks}


def print_trace(engine: LLMEngine, title: str) -> None:
    """Where one more step's time goes: torch.profiler's top operators by device time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - t0
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(f"--- {title}: one step {1e3 * wall:.1f} ms (profiled)")
    print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))
    import cProfile
    import pstats
    host = cProfile.Profile()
    host.runcall(engine.step)  # host time by Python function (kernel launches included)
    pstats.Stats(host).sort_stats("tottime").print_stats(18)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny", "micro"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prefixes", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lockstep", action="store_true",
                    help="step without overlapping host and device work (overlap is the engine's default on CUDA)")
    ap.add_argument("--trace", action="store_true", help="print a torch.profiler table of one more step per case")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = out_dir(args.out, "shared_prefix_step")
    device = torch.device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    max_len = max(args.prefixes) + args.question_tokens + new_tokens(args) + 16
    model_dir = shape_dir(args.shape, Path(tempfile.mkdtemp()), max_positions=max_len)
    model = load_model(model_dir, parse_dtype(dtype), device, max_positions=max_len, load_format="dummy")
    rows = []
    cases = [(p, shared) for p in args.prefixes for shared in (True, False)]
    for prefix, shared in track(cases, description="prefix x path"):
        engine = engine_for(model_dir, model, args.device, dtype, args.batch, prefix, args, shared)
        row = decode_rate(engine, args.batch, prefix, args, np.random.default_rng(args.seed))
        rows.append({**row, "shared_path": shared})
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report(rows, args, out, machine_info(device))


def drop(rows: list[dict], shared: bool) -> float:
    mine = sorted((r for r in rows if r["shared_path"] == shared), key=lambda r: r["prefix"])
    return 1.0 - mine[-1]["tok_s"] / mine[0]["tok_s"]


def report(rows: list[dict], args, out: Path, info) -> None:
    table = Table(title=f"decode tokens/s, batch {args.batch}, {args.shape} on {info.device}")
    for col in ("prefix", "shared path tok/s", "plain tok/s", "shared / plain"):
        table.add_column(col, justify="right")
    by = {(r["prefix"], r["shared_path"]): r for r in rows}
    for p in args.prefixes:
        s, n = by[(p, True)], by[(p, False)]
        table.add_row(str(p), f"{s['tok_s']:.0f}", f"{n['tok_s']:.0f}", f"{s['tok_s'] / n['tok_s']:.2f}x")
    console = Console()
    console.print(table)
    shared_drop, plain_drop = drop(rows, True), drop(rows, False)
    console.print(f"throughput drop from prefix {min(args.prefixes)} to {max(args.prefixes)}: "
                  f"shared path {100 * shared_drop:.1f}%, plain {100 * plain_drop:.1f}%")
    write_json(out / "shared_prefix_step.json", {"args": vars(args), "machine": info.__dict__, "rows": rows,
                                                  "drop_shared": shared_drop, "drop_plain": plain_drop,
                                                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    _plot(rows, args, out / "shared_prefix_step.png")


def _plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for shared, label in ((True, "shared-prefix path"), (False, "plain paged decode")):
        mine = sorted((r for r in rows if r["shared_path"] == shared), key=lambda r: r["prefix"])
        ax.plot([r["prefix"] for r in mine], [r["tok_s"] for r in mine], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shared prefix (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"whole-model decode, batch {args.batch}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
