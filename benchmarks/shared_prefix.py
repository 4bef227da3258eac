"""Shared-prefix (Hydragen) decode attention against plain paged decode and SDPA (Llama-3-8B heads).

  PYTHONPATH=. python -m benchmarks.shared_prefix --out out/shared_prefix
  PYTHONPATH=. python -m benchmarks.shared_prefix --batches 256 --prefixes 16384 --no-sweep

Each case: ``batch`` sequences share one ``prefix``-token system prompt (the same physical
blocks, as prefix caching leaves them) and own suffixes uniform in [suffix_min, suffix_max];
bf16, block 16, shuffled block ids. Timed (median, CUDA events, L2 flushed between calls):
  shared   TritonAttention with the plan (suffix decode + segment kernel + merge), graph replay;
  eager    the same launched eagerly, as the engine runs shared steps (host work included);
  plain    TritonAttention without the plan (split-K paged decode), graph replay;
  SDPA     torch SDPA (enable_gqa) on contiguous per-sequence K/V of prefix + mean suffix tokens.
Each case also times the shared path's three launches alone (suffix decode, segment kernel
with its achieved TFLOP/s, merge). Floor: the larger of (prefix once + suffixes) K/V bytes
over the measured copy rate and the prefix's matrix FLOPs over the measured bf16 matmul rate.
Unless ``--no-sweep``, the SWEEP configs are timed first on the largest prefix (largest and
smallest batch): the whole shared path and the segment kernel alone, printed as a table; the
best by geometric mean of the whole path is used for the cases. "hidden" is how much of the
three launches timed alone the overlap (second stream) hides in the whole path.
Writes shared_prefix.json, shared_prefix.png, shared_prefix_calibration.json to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from benchmarks.attention import geomean
from benchmarks.common import copy_bandwidth, graph_seconds, machine_info, median_seconds, out_dir, write_json
from benchmarks.paged_batches import BatchSpec, PagedBatch, relative_error
from benchmarks.shared_prefix_batches import PrefixTree, random_shared_batch
from engine.attention.shared_prefix.triton_backend import prepare
from engine.attention.shared_prefix.triton_kernel import SharedPrefixConfig
from engine.attention.triton_backend import TritonAttention, multiprocessors
from engine.attention.triton_decode import DecodeConfig

HEADS, KV_HEADS, DIM, BLOCK = 32, 8, 128, 16  # Llama-3-8B
DTYPE = torch.bfloat16
C = SharedPrefixConfig
# One idea per entry (docs/kernels.md, "Shared-prefix"). Registers and shared memory per program from an
# sm_90 compile with triton 3.6; "+k" = suffix-decode programs (64 regs x 128 threads, 21.5 KB) that fit beside.
SWEEP = [
    C(block_m=64, num_warps=4, num_stages=2, programs_per_sm=2, maxnreg=0),  # old tiles: 234 regs, 80 KB, +0
    C(block_m=64, num_warps=4, num_stages=2, programs_per_sm=2),             # capped at 192 regs: +2
    C(block_m=64, num_warps=4, num_stages=3, programs_per_sm=2, maxnreg=0),  # pipelined: 244 regs, 112 KB, +0
    C(block_m=64, block_n=32, num_warps=4, num_stages=3, programs_per_sm=3, maxnreg=0),  # 144 regs, 64 KB, +1
    C(block_m=64, block_n=32, num_warps=4, num_stages=4, programs_per_sm=2, maxnreg=0),  # 144 regs, 80 KB, +2
    C(maxnreg=0),                # 128 rows over 8 warps, 3 stages: 220 regs, 128 KB, +1
    C(),                         # the default: the same capped at 192 regs, +2
    C(overlap_suffix=False),     # the default without the second stream
    C(num_stages=4),             # 160 KB, +2
    C(block_n=32, num_stages=4),  # 186 regs, 96 KB, +2
]


def label(c: SharedPrefixConfig) -> str:
    """A short name of a config: rows, keys, warps, stages, programs per SM, register cap, overlap."""
    return (f"m{c.block_m} n{c.block_n} w{c.num_warps} s{c.num_stages} p{c.programs_per_sm} "
            f"r{c.maxnreg or '-'}{' ov' if c.overlap_suffix else ''}")


@dataclass(frozen=True)
class Case:
    batch: int
    prefix: int
    suffix_mean: float
    shared_s: float
    eager_s: float
    plain_s: float
    sdpa_s: float | None
    floor_s: float
    error_vs_plain: float
    suffix_s: float     # the three launches timed alone (graph replay)
    segments_s: float
    merge_s: float

    @property
    def hidden_s(self) -> float:
        """How much of the three launches timed alone the whole path hides (overlap; launch gaps count against)."""
        return self.suffix_s + self.segments_s + self.merge_s - self.shared_s

    @property
    def segment_flops(self) -> float:
        return 4.0 * self.batch * HEADS * self.prefix * DIM

    def record(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "segment_flops_per_s": self.segment_flops / self.segments_s,
                "speedup_vs_plain": self.plain_s / self.shared_s,
                "hidden_s": self.hidden_s,
                "speedup_vs_sdpa": None if self.sdpa_s is None else self.sdpa_s / self.shared_s,
                "tokens_per_s": self.batch / self.shared_s, "floor_fraction": self.floor_s / self.shared_s}


def make_batch(batch: int, prefix: int, suffixes: tuple[int, int], seed: int) -> PagedBatch:
    rng = random.Random(seed)
    tree = PrefixTree(((-1, prefix),), tuple((0, rng.randint(*suffixes)) for _ in range(batch)))
    return random_shared_batch(tree, BatchSpec((1,), (1,), HEADS, KV_HEADS, DIM, BLOCK, DTYPE, 64), "cuda", seed)


def forward(backend: TritonAttention, b: PagedBatch, shared: bool):
    meta = b.meta if shared else dataclasses.replace(b.meta, shared=None)
    return lambda: backend.forward(b.q, b.k_cache, b.v_cache, meta, b.scale)


def time_sdpa(b: PagedBatch, context: int) -> float | None:
    """SDPA over contiguous K/V [B, H_kv, context, D] (None when it does not fit in memory)."""
    nbytes = 2 * b.q.shape[0] * KV_HEADS * context * DIM * DTYPE.itemsize
    if nbytes > 0.8 * torch.cuda.mem_get_info()[0]:
        return None
    q = b.q.unsqueeze(2)
    k, v = (torch.randn(b.q.shape[0], KV_HEADS, context, DIM, dtype=DTYPE, device="cuda") for _ in "kv")
    seconds = graph_seconds(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), q.device)  # noqa: F821 (ruff: the later del)
    del k, v
    torch.cuda.empty_cache()
    return seconds


def run_case(batch: int, prefix: int, suffixes: tuple[int, int], config: SharedPrefixConfig,
             copy_bps: float, flops_per_s: float) -> Case:
    b = make_batch(batch, prefix, suffixes, seed=batch * 31 + prefix)
    suffix_total = int((b.meta.seq_lens.sum() - batch * prefix).item())
    backend, plain = TritonAttention(shared=config), TritonAttention()
    error = relative_error(forward(backend, b, True)(), forward(plain, b, False)())
    shared_s = graph_seconds(forward(backend, b, True), b.q.device)
    eager_s = median_seconds(forward(backend, b, True), b.q.device)
    plain_s = graph_seconds(forward(plain, b, False), b.q.device)
    kv_bytes = (prefix + suffix_total) * KV_HEADS * DIM * 2 * DTYPE.itemsize
    floor = max(kv_bytes / copy_bps, 4 * batch * HEADS * prefix * DIM / flops_per_s)
    parts = time_launches(b, config)
    sdpa_s = time_sdpa(b, prefix + round(suffix_total / batch))
    del b
    torch.cuda.empty_cache()
    return Case(batch, prefix, suffix_total / batch, shared_s, eager_s, plain_s, sdpa_s, floor, error, *parts)


def time_launches(b: PagedBatch, config: SharedPrefixConfig) -> tuple[float, float, float]:
    """Graph-replay seconds of the suffix decode, the segment kernel and the merge, each alone."""
    decode = DecodeConfig()
    launch = prepare(b.q, b.k_cache, b.meta, multiprocessors(b.q.device), config, decode)
    out = torch.empty_like(b.q)
    return (graph_seconds(lambda: launch.suffix(b.q, b.k_cache, b.v_cache, b.scale, decode), b.q.device),
            graph_seconds(lambda: launch.segments(b.q, b.k_cache, b.v_cache, b.scale, config), b.q.device),
            graph_seconds(lambda: launch.merge(out), b.q.device))


def sweep(cases: list[tuple[int, int]], suffixes: tuple[int, int]) -> tuple[SharedPrefixConfig, list[dict]]:
    """Graph-replay time of the whole path and of the segment kernel alone, for every SWEEP config on
    each case; the best config by geometric mean of the whole path."""
    batches = {c: make_batch(*c, suffixes, seed=sum(c)) for c in cases}
    rows = []
    for config in SWEEP:
        for (batch, prefix), b in batches.items():
            seconds = graph_seconds(forward(TritonAttention(shared=config), b, True), b.q.device)
            launch = prepare(b.q, b.k_cache, b.meta, multiprocessors(b.q.device), config, DecodeConfig())
            segments = graph_seconds(lambda: launch.segments(b.q, b.k_cache, b.v_cache, b.scale, config), b.q.device)
            rows.append({"config": config, "batch": batch, "prefix": prefix, "seconds": seconds,
                         "segments_s": segments, "slots": launch.step.part_lse.shape[2]})
            b.meta.shared.tensors.clear()
    del batches
    torch.cuda.empty_cache()
    best = min(SWEEP, key=lambda c: geomean([r["seconds"] for r in rows if r["config"] == c]))
    print_sweep(rows, best, cases)
    return best, rows


def print_sweep(rows: list[dict], best: SharedPrefixConfig, cases: list[tuple[int, int]]) -> None:
    table = Table(title="segment-kernel sweep (graph replay, µs): whole shared path / segment kernel alone")
    table.add_column("config")
    for batch, prefix in cases:
        for what in ("shared", "segments", "TFLOP/s", "slots"):
            table.add_column(f"B{batch}x{prefix // 1024}K {what}", justify="right")
    for config in SWEEP:
        cells = []
        for batch, prefix in cases:
            r = next(r for r in rows if r["config"] == config and (r["batch"], r["prefix"]) == (batch, prefix))
            flops = 4.0 * batch * HEADS * prefix * DIM / r["segments_s"]
            cells += [f"{r['seconds'] * 1e6:.1f}", f"{r['segments_s'] * 1e6:.1f}", f"{flops / 1e12:.0f}",
                      str(r["slots"])]
        table.add_row(("* " if config == best else "  ") + label(config), *cells)
    Console(width=200).print(table)


def matmul_rate() -> float:
    a, b = (torch.randn(8192, 8192, dtype=DTYPE, device="cuda") for _ in "ab")
    return 2 * 8192**3 / median_seconds(lambda: a @ b, a.device)


def throughput_drops(cases: list[Case]) -> dict[int, float]:
    """Per batch: 1 - tokens/s at the longest prefix over tokens/s at the shortest."""
    drops = {}
    for batch in sorted({c.batch for c in cases}):
        row = sorted((c for c in cases if c.batch == batch), key=lambda c: c.prefix)
        if len(row) > 1:
            drops[batch] = 1 - row[0].shared_s / row[-1].shared_s
    return drops


def print_table(cases: list[Case], copy_bps: float, flops_per_s: float) -> None:
    table = Table(title=f"shared-prefix decode, bf16, Llama-3-8B heads, block {BLOCK}; copy {copy_bps / 1e9:.0f} GB/s, "
                        f"bf16 matmul {flops_per_s / 1e12:.0f} TFLOP/s")
    for col in ("batch", "prefix", "shared µs", "eager µs", "plain µs", "SDPA µs", "vs plain", "vs SDPA",
                "floor µs", "% floor", "suffix µs", "segments µs", "seg TFLOP/s", "merge µs", "hidden µs", "err"):
        table.add_column(col, justify="right")
    for c in cases:
        table.add_row(str(c.batch), str(c.prefix), f"{c.shared_s * 1e6:.1f}", f"{c.eager_s * 1e6:.1f}",
                      f"{c.plain_s * 1e6:.1f}", "-" if c.sdpa_s is None else f"{c.sdpa_s * 1e6:.1f}",
                      f"{c.plain_s / c.shared_s:.1f}x", "-" if c.sdpa_s is None else f"{c.sdpa_s / c.shared_s:.1f}x",
                      f"{c.floor_s * 1e6:.1f}", f"{100 * c.floor_s / c.shared_s:.0f}", f"{c.suffix_s * 1e6:.1f}",
                      f"{c.segments_s * 1e6:.1f}", f"{c.segment_flops / c.segments_s / 1e12:.0f}",
                      f"{c.merge_s * 1e6:.1f}", f"{c.hidden_s * 1e6:.1f}", f"{c.error_vs_plain:.1e}")
    Console(width=200).print(table)


def plot(cases: list[Case], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(cases))
    for i, (name, key) in enumerate((("shared prefix", "shared_s"), ("plain paged", "plain_s"), ("SDPA", "sdpa_s"))):
        left.bar([j + (i - 1) * 0.27 for j in x], [(getattr(c, key) or 0) * 1e6 for c in cases], 0.27, label=name)
    left.set_xticks(list(x), [f"B{c.batch}\n{c.prefix // 1024}K" for c in cases])
    left.set_yscale("log")
    left.set_ylabel("µs per layer (median)")
    left.legend()
    for batch in sorted({c.batch for c in cases}):
        row = sorted((c for c in cases if c.batch == batch), key=lambda c: c.prefix)
        right.plot([c.prefix for c in row], [c.batch / c.shared_s / 1e6 for c in row], marker="o", label=f"B{batch}")
    right.set_xscale("log", base=2)
    right.set_xlabel("shared prefix tokens")
    right.set_ylabel("M tokens/s (one layer's attention)")
    right.legend()
    fig.suptitle("shared-prefix decode attention, Llama-3-8B heads, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 256])
    p.add_argument("--prefixes", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--suffix", type=int, nargs=2, default=[128, 512], metavar=("MIN", "MAX"))
    p.add_argument("--no-sweep", action="store_true", help="use SharedPrefixConfig() without the sweep")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else out/shared_prefix)")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.shared_prefix needs a CUDA device (the Triton kernels are CUDA-only)")
    if min(a.batches) < 2 or min(a.prefixes) < BLOCK or not 1 <= a.suffix[0] <= a.suffix[1]:
        raise SystemExit(f"--batches >= 2, --prefixes >= {BLOCK} and 1 <= suffix MIN <= MAX, please")
    if any(p % BLOCK for p in a.prefixes):
        raise SystemExit(f"--prefixes must be multiples of the block size {BLOCK}")
    return a


def main() -> None:
    args = parse_args()
    out, device = out_dir(args.out, "shared_prefix"), torch.device("cuda")
    machine, suffixes = machine_info(device), tuple(args.suffix)
    copy_bps, flops_per_s = copy_bandwidth(device), matmul_rate()
    config, tuning = SharedPrefixConfig(), []
    if not args.no_sweep:
        config, tuning = sweep([(max(args.batches), max(args.prefixes)), (min(args.batches), max(args.prefixes))],
                               suffixes)
    cases = [run_case(b, p, suffixes, config, copy_bps, flops_per_s)
             for b, p in itertools.product(args.batches, args.prefixes)]
    print_table(cases, copy_bps, flops_per_s)
    drops = throughput_drops(cases)
    Console().print(f"config: {label(config)} = {config}\nthroughput drop, shortest -> longest prefix: "
                    + ", ".join(f"B{b} {100 * d:.0f}%" for b, d in drops.items()) + f"\n{machine}")
    write_json(out / "shared_prefix.json", {
        "machine": machine, "copy_bytes_per_s": copy_bps, "matmul_flops_per_s": flops_per_s, "config": config,
        "suffix_range": suffixes, "block_size": BLOCK, "cases": [c.record() for c in cases],
        "throughput_drop": drops, "tuning": tuning})
    measurements = [{"op": "shared_prefix_decode", "batch": c.batch, "prefix": c.prefix,
                     "suffix": round(c.suffix_mean), "seconds": c.shared_s} for c in cases]
    write_json(out / "shared_prefix_calibration.json",
               {"device": machine.device, "model": "llama-3-8b", "measurements": measurements})
    plot(cases, out / "shared_prefix.png")


if __name__ == "__main__":
    main()
