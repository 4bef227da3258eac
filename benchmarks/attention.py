"""Paged attention kernels against the bandwidth ceilings and torch SDPA (Llama-3-8B heads).

  PYTHONPATH=. python -m benchmarks.attention --out out/attention            # full table
  PYTHONPATH=. python -m benchmarks.attention --tune --batches 16 --contexts 4096

Decode: one query row per sequence over a paged bf16 cache with shuffled block ids, timed
as a CUDA-graph replay (how the engine runs decode) with the L2 flushed between replays.
Bytes = K + V read once + q + out; achieved GB/s is compared with two ceilings measured in
the same run (benchmarks/ceilings.py): a device-to-device copy (read + write bytes) and a
read-only reduction (the honest roof for a kernel that reads K/V and writes little; it is
above the copy rate), and with SDPA on contiguous K/V of the same shapes (enable_gqa, or K/V
expanded to all heads where that fits; the faster is kept).
Every decode case is also timed in variants of the run's config: the split merge fused into
the decode launch or a separate merge kernel (``DecodeConfig.fused_merge``), and the block
table read one tile ahead (``table_lookahead``, at >= 3 stages) or in the tile's own
iteration (at 2 stages). Prefill: causal attention of whole prompts, Triton over the paged
cache against SDPA ``is_causal`` on contiguous tensors.
``--tune`` first sweeps kernel configs and uses the best: decode tiles x stages x programs per
SM x lookahead on five cases, then fused/unfused merge x programs_per_sm {1, 2, 4, 8} on small and mid cases
(``merge_sweep`` in the JSON).
Writes attention.json, attention_calibration.json and attention.png to --out (default $OUT).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.ceilings import Ceilings, describe, measure
from benchmarks.common import graph_seconds, machine_info, median_seconds, out_dir, write_json
from benchmarks.paged_batches import BatchSpec, random_batch
from engine.attention.triton_backend import TritonAttention
from engine.attention.triton_decode import SHARED_BUDGET, DecodeConfig
from engine.attention.triton_prefill import PrefillConfig

HEADS, KV_HEADS, DIM = 32, 8, 128  # Llama-3-8B
DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Case:
    """One decode timing: Triton over the paged cache and SDPA over contiguous K/V."""

    batch: int
    context: int
    nbytes: int
    seconds: float | None = None  # the run's decode config
    variants: dict[str, float] = dataclasses.field(default_factory=dict)  # VARIANTS of that config
    sdpa_seconds: float | None = None
    sdpa_path: str = ""
    skipped: str = ""

    def gbps(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.nbytes / seconds / 1e9

    def record(self, ceilings: Ceilings) -> dict[str, object]:
        """The JSON row: the fields plus achieved GB/s, fractions of the copy and read-only rates,
        speed-up over SDPA."""
        done = not self.skipped
        return {**dataclasses.asdict(self), "gbps": self.gbps(self.seconds),
                "copy_fraction": self.gbps(self.seconds) * 1e9 / ceilings.copy_bps if done else None,
                "read_fraction": self.gbps(self.seconds) * 1e9 / ceilings.read_bps if done else None,
                "sdpa_gbps": self.gbps(self.sdpa_seconds),
                "speedup_vs_sdpa": self.sdpa_seconds / self.seconds if done else None}


@dataclass(frozen=True)
class WriteCase:
    """write_kv of ``rows`` new tokens: the Triton kernel against index_copy_ (the torch reference)."""

    rows: int
    seconds: float
    index_copy_seconds: float


@dataclass(frozen=True)
class PrefillCase:
    batch: int
    length: int
    flops: float
    seconds: float
    sdpa_seconds: float


def decode_bytes(batch: int, context: int) -> int:
    kv = 2 * batch * context * KV_HEADS * DIM
    return (kv + 2 * batch * HEADS * DIM) * DTYPE.itemsize


def fits(nbytes: int) -> bool:
    free, _ = torch.cuda.mem_get_info()
    return nbytes < 0.85 * free


def decode_batch(batch: int, context: int, block_size: int, seed: int):
    spec = BatchSpec((1,) * batch, (context,) * batch, HEADS, KV_HEADS, DIM, block_size, DTYPE, spare_blocks=64)
    return random_batch(spec, "cuda", seed)


def time_forward(backend: TritonAttention, b) -> float:
    """Median seconds of a CUDA-graph replay of one attention forward over batch ``b``."""
    return graph_seconds(lambda: backend.forward(b.q, b.k_cache, b.v_cache, b.meta, b.scale), b.q.device)


def variants(config: DecodeConfig) -> dict[str, DecodeConfig]:
    """The run's config with one choice flipped each way (a name per column of the table)."""
    return {"fused": replace(config, fused_merge=True), "unfused": replace(config, fused_merge=False),
            "lookahead": replace(config, table_lookahead=True, num_stages=max(3, config.num_stages)),
            "no lookahead": replace(config, table_lookahead=False, num_stages=2)}


def make_tables_sequential(block_tables: torch.Tensor, context: int, block_size: int) -> None:
    """Give every sequence consecutive block ids (0.., then the next run): the same bytes as the
    shuffled tables, read as long contiguous runs, to tell the page-table access pattern's cost
    from the kernel's own. The cache contents no longer match the reference: timing only."""
    per_seq = -(-context // block_size)
    ids = torch.arange(block_tables.shape[0] * per_seq, dtype=block_tables.dtype, device=block_tables.device)
    block_tables[:, :per_seq] = ids.view(-1, per_seq)


def time_triton_decode(case: Case, block_size: int, configs: list[DecodeConfig],
                       sequential: DecodeConfig | None = None) -> tuple[list[float], float | None]:
    """Seconds of each config on one batch (built once: the largest take long to fill), then of
    ``sequential`` over the same batch with sequential block tables."""
    b = decode_batch(case.batch, case.context, block_size, seed=case.batch * 7 + case.context)
    seconds = [time_forward(TritonAttention(decode=config), b) for config in configs]
    in_order = None
    if sequential is not None:
        make_tables_sequential(b.meta.block_tables, case.context, block_size)
        in_order = time_forward(TritonAttention(decode=sequential), b)
    del b
    torch.cuda.empty_cache()
    return seconds, in_order


def time_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[float, str]:
    """Best of SDPA with enable_gqa and with K/V expanded to every head (where that fits)."""
    best = (graph_seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True),
                          q.device), "enable_gqa")
    group = q.shape[1] // k.shape[1]
    if fits(2 * group * k.numel() * k.element_size()):
        ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        expanded = graph_seconds(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=causal), q.device)
        best = min(best, (expanded, "expanded heads"))
        del ke, ve
    return best


def run_decode_case(batch: int, context: int, block_size: int, config: DecodeConfig,
                    sequential_blocks: bool = False) -> Case:
    case = Case(batch, context, decode_bytes(batch, context))
    if not fits(case.nbytes + (64 << 20)):
        return replace(case, skipped=f"{case.nbytes / 2**30:.1f} GiB of K/V does not fit")
    named = variants(config)
    configs = list(dict.fromkeys([config, *named.values()]))  # the run's config is often one of them
    seconds, in_order = time_triton_decode(case, block_size, configs, config if sequential_blocks else None)
    timed = dict(zip(configs, seconds))
    found = {name: timed[c] for name, c in named.items()}
    case = replace(case, seconds=timed[config],
                   variants=found | ({"sequential blocks": in_order} if sequential_blocks else {}))
    q = torch.randn(batch, HEADS, 1, DIM, dtype=DTYPE, device="cuda")
    k, v = (torch.randn(batch, KV_HEADS, context, DIM, dtype=DTYPE, device="cuda") for _ in "kv")
    sdpa, path = time_sdpa(q, k, v, causal=False)
    del q, k, v
    torch.cuda.empty_cache()
    return replace(case, sdpa_seconds=sdpa, sdpa_path=path)


def time_triton_prefill(batch: int, length: int, block_size: int, config: PrefillConfig) -> float:
    spec = BatchSpec((length,) * batch, (length,) * batch, HEADS, KV_HEADS, DIM, block_size, DTYPE)
    b = random_batch(spec, "cuda", seed=length)
    seconds = time_forward(TritonAttention(prefill=config), b)
    del b
    torch.cuda.empty_cache()
    return seconds


def run_prefill_case(batch: int, length: int, block_size: int, config: PrefillConfig) -> PrefillCase:
    seconds = time_triton_prefill(batch, length, block_size, config)
    q = torch.randn(batch, HEADS, length, DIM, dtype=DTYPE, device="cuda")
    k, v = (torch.randn(batch, KV_HEADS, length, DIM, dtype=DTYPE, device="cuda") for _ in "kv")
    sdpa, _ = time_sdpa(q, k, v, causal=True)
    flops = 4.0 * batch * HEADS * DIM * length * (length + 1) / 2
    return PrefillCase(batch, length, flops, seconds, sdpa)


@dataclass(frozen=True)
class TuneRow:
    """One config's time on one case during --tune."""

    kind: str
    config: DecodeConfig | PrefillConfig
    batch: int
    context: int
    seconds: float


def geomean(xs: list[float]) -> float:
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp())


def sweep(kind: str, configs: list, cases: list[tuple[int, int]], make_batch, make_backend) -> list[TuneRow]:
    """Time every config on every case; each case's batch is built once and reused."""
    batches = {case: make_batch(*case) for case in cases}
    rows = []
    for cfg in track(configs, description=f"tuning {kind}"):
        backend = make_backend(cfg)
        for (batch, context), b in batches.items():
            try:
                t = time_forward(backend, b)
            except Exception as e:  # noqa: BLE001  (a tile that exceeds shared memory is not a candidate)
                Console().print(f"[yellow]{cfg}: {type(e).__name__}: {str(e)[:160]}")
                t = float("inf")
            rows.append(TuneRow(kind, cfg, batch, context, t))
    del batches
    torch.cuda.empty_cache()
    return rows


def best(rows: list[TuneRow]):
    by_config: dict = {}
    for r in rows:
        by_config.setdefault(r.config, []).append(r.seconds)
    return min(by_config, key=lambda c: geomean(by_config[c]))


def time_write_kv(rows: int, block_size: int) -> WriteCase:
    """Eager timings (the reference syncs on its slot mask, so it cannot be graph-captured)."""
    from engine.attention.reference import write_kv
    spec = BatchSpec((rows,), (rows,), HEADS, KV_HEADS, DIM, block_size, DTYPE)
    b = random_batch(spec, "cuda", seed=rows)
    args = (b.k_cache, b.v_cache, b.new_k, b.new_v, b.meta.slot_mapping)
    device = b.q.device
    return WriteCase(rows, median_seconds(lambda: TritonAttention().write_kv(*args), device),
                     median_seconds(lambda: write_kv(*args), device))


# Few splits with deep tiles (as FlashAttention's split-KV heuristic picks: one CTA per SM at
# 16 x 4K) against many programs per SM with short tiles; 8 warps lost every earlier sweep.
TILE_SWEEP_CASES = [(16, 512), (16, 4096), (64, 4096), (16, 32768), (1, 32768)]
MERGE_SWEEP_CASES = [(1, 512), (1, 4096), (1, 32768), (4, 4096), (16, 512), (16, 4096), (40, 4096), (64, 512),
                     (64, 4096)]


def tune_decode(block_size: int, base: DecodeConfig) -> tuple[DecodeConfig, list[TuneRow]]:
    """Tile shape x stages x programs per SM x lookahead, then fused/unfused merge x programs per SM."""
    def make(b: int, c: int):
        return decode_batch(b, c, block_size, seed=b + c)
    tiles = [replace(base, block_n=n, num_stages=s, programs_per_sm=p, table_lookahead=la)
             for n, s, p, la in itertools.product((32, 64, 128), (2, 3, 4), (1, 2, 4), (False, True))
             if 2 * n * DIM * DTYPE.itemsize * s <= SHARED_BUDGET]  # larger ones would be shrunk to a smaller n
    rows = sweep("decode tiles", tiles, TILE_SWEEP_CASES, make, lambda c: TritonAttention(decode=c))
    tile = best(rows)
    splits = [replace(tile, programs_per_sm=p, fused_merge=f)
              for f, p in itertools.product((True, False), (1, 2, 4, 8))]
    split_rows = sweep("decode merge", splits, MERGE_SWEEP_CASES, make, lambda c: TritonAttention(decode=c))
    return best(split_rows), rows + split_rows


MERGE_FIELDS = ("fused_merge", "programs_per_sm")
TILE_FIELDS = ("block_n", "num_stages", "programs_per_sm", "table_lookahead")


def sweep_summary(rows: list[TuneRow], kind: str, fields: tuple[str, ...]) -> list[dict[str, object]]:
    """One sweep's rows per config: the swept ``fields``, µs per case and their geomean, fastest first."""
    by_config: dict[DecodeConfig, dict[str, float]] = {}
    for r in rows:
        if r.kind == kind:
            by_config.setdefault(r.config, {})[f"{r.batch}x{r.context}"] = r.seconds * 1e6
    summary = [{**{f: getattr(c, f) for f in fields}, "geomean_us": geomean(list(us.values())), "us": us}
               for c, us in by_config.items()]
    return sorted(summary, key=lambda r: r["geomean_us"])


def tune_prefill(block_size: int, base: PrefillConfig) -> tuple[PrefillConfig, list[TuneRow]]:
    def make(b: int, n: int):
        spec = BatchSpec((n,) * b, (n,) * b, HEADS, KV_HEADS, DIM, block_size, DTYPE)
        return random_batch(spec, "cuda", seed=n)
    grid = [replace(base, block_m=m, block_n=n, num_warps=w, num_stages=s)
            for m, n, w, s in ((64, 64, 4, 2), (64, 128, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 128, 8, 3),
                               (64, 32, 4, 2), (128, 64, 8, 2))]
    rows = sweep("prefill", grid, [(1, 4096)], make, lambda c: TritonAttention(prefill=c))
    return best(rows), rows


def print_tables(cases: list[Case], prefills: list[PrefillCase], writes: list[WriteCase], ceilings: Ceilings,
                 sweeps: dict[str, list[dict[str, object]]]) -> None:
    table = Table(title=f"paged decode, bf16, Llama-3-8B heads; {describe(ceilings)}")
    names = list(dict.fromkeys(n for c in cases if not c.skipped for n in c.variants))
    for col in ("batch", "context", "triton µs", "GB/s", "% copy", "% read-only", *(f"{n} µs" for n in names),
                "SDPA µs", "SDPA % read-only", "SDPA path", "vs SDPA"):
        table.add_column(col, justify="right")
    for c in cases:
        if c.skipped:
            table.add_row(str(c.batch), str(c.context), "skipped: " + c.skipped, *[""] * (7 + len(names)))
            continue
        row = c.record(ceilings)
        table.add_row(str(c.batch), str(c.context), f"{c.seconds * 1e6:.1f}", f"{row['gbps']:.0f}",
                      f"{100 * row['copy_fraction']:.0f}", f"{100 * row['read_fraction']:.0f}",
                      *(f"{c.variants[n] * 1e6:.1f}" if n in c.variants else "" for n in names),
                      f"{c.sdpa_seconds * 1e6:.1f}", f"{100 * row['sdpa_gbps'] * 1e9 / ceilings.read_bps:.0f}",
                      c.sdpa_path, f"{c.sdpa_seconds / c.seconds:.2f}x")
    ptable = Table(title="causal prefill, bf16, Llama-3-8B heads")
    for col in ("batch", "length", "triton ms", "TFLOP/s", "SDPA ms", "SDPA TFLOP/s", "vs SDPA"):
        ptable.add_column(col, justify="right")
    for p in prefills:
        ptable.add_row(str(p.batch), str(p.length), f"{p.seconds * 1e3:.3f}", f"{p.flops / p.seconds / 1e12:.0f}",
                       f"{p.sdpa_seconds * 1e3:.3f}", f"{p.flops / p.sdpa_seconds / 1e12:.0f}",
                       f"{p.sdpa_seconds / p.seconds:.2f}x")
    wtable = Table(title="write_kv (eager, includes launch)")
    for col in ("rows", "triton µs", "index_copy_ µs"):
        wtable.add_column(col, justify="right")
    for w in writes:
        wtable.add_row(str(w.rows), f"{w.seconds * 1e6:.1f}", f"{w.index_copy_seconds * 1e6:.1f}")
    console = Console(width=200)
    for t in (table, ptable, wtable, *(summary_table(title, rows) for title, rows in sweeps.items() if rows)):
        console.print(t)


def summary_table(title: str, rows: list[dict[str, object]]) -> Table:
    """A sweep summary (``sweep_summary``) as a table: swept fields, µs per case, geomean."""
    fields = [k for k in rows[0] if k not in ("us", "geomean_us")]
    table = Table(title=f"{title} (µs, CUDA-graph replay)")
    for col in (*fields, *rows[0]["us"], "geomean"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(str(r[f]) for f in fields), *(f"{us:.1f}" for us in r["us"].values()),
                      f"{r['geomean_us']:.1f}")
    return table


def plot(cases: list[Case], ceilings: Ceilings, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [c for c in cases if not c.skipped]
    labels = [f"B{c.batch}\n{c.context // 1024}K" if c.context >= 1024 else f"B{c.batch}\n{c.context}" for c in done]
    x = range(len(done))
    fig, ax = plt.subplots(figsize=(max(6, len(done) * 0.8), 4))
    ax.bar([i - 0.2 for i in x], [c.gbps(c.seconds) for c in done], 0.4, label="Triton paged decode")
    ax.bar([i + 0.2 for i in x], [c.gbps(c.sdpa_seconds) for c in done], 0.4, label="SDPA, contiguous K/V")
    ax.axhline(ceilings.read_bps / 1e9, color="k", linestyle="-", label="read-only (reduction)")
    ax.axhline(ceilings.copy_bps / 1e9, color="k", linestyle="--", label="device copy (read+write)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("GB/s (K+V read once, q, out)")
    ax.set_title("decode attention, Llama-3-8B heads, bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; see ``--help``."""

    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    block_size: int
    tune: bool
    sequential_blocks: bool
    out: str | None
    decode: tuple[tuple[str, object], ...] = ()  # DecodeConfig overrides

    def __post_init__(self) -> None:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks.attention needs a CUDA device (the Triton kernels are CUDA-only)")
        if min(self.batches + self.contexts) < 1 or any(p < 1 for p in self.prefill_lengths):
            raise SystemExit("--batches, --contexts and --prefill-lengths must be positive")
        if self.block_size not in (16, 32, 64, 128):
            raise SystemExit(f"--block-size must be 16, 32, 64 or 128, got {self.block_size}")


def decode_overrides(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs as DecodeConfig fields (ints or true/false), checked by name."""
    fields = {f.name: f.type for f in dataclasses.fields(DecodeConfig)}
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--decode takes KEY=VALUE with KEY one of {', '.join(fields)}; got {item!r}")
        if fields[key] in (bool, "bool"):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--decode {key} takes true or false, got {value!r}")
            out[key] = value.lower() == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                raise SystemExit(f"--decode {key} takes an integer, got {value!r}") from None
    return out


def parse_args() -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 4096, 32768])
    p.add_argument("--prefill-lengths", type=int, nargs="*", default=[2048, 8192],
                   help="one prompt of each length (batch 1); pass none to skip prefill")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--tune", action="store_true", help="sweep kernel configs first and use the best")
    p.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                   help="decode config fields to use instead of the defaults (e.g. max_splits=1 "
                        "table_lookahead=true); --tune starts from them")
    p.add_argument("--sequential-blocks", action="store_true",
                   help="also time each decode case with consecutive block ids (the paged layout's cost)")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else out/attention)")
    a = p.parse_args()
    return BenchConfig(tuple(a.batches), tuple(a.contexts), tuple(a.prefill_lengths), a.block_size,
                       a.tune, a.sequential_blocks, a.out, tuple(decode_overrides(a.decode).items()))


def main() -> None:
    cfg = parse_args()
    out = out_dir(cfg.out, "attention")
    device = torch.device("cuda")
    machine = machine_info(device)
    ceilings = measure(device)
    decode, prefill, tuning = DecodeConfig(**dict(cfg.decode)), PrefillConfig(), []
    if cfg.tune:
        decode, decode_rows = tune_decode(cfg.block_size, decode)
        prefill, prefill_rows = tune_prefill(cfg.block_size, prefill)
        tuning = decode_rows + prefill_rows
    grid = list(itertools.product(cfg.batches, cfg.contexts))
    cases = [run_decode_case(b, c, cfg.block_size, decode, cfg.sequential_blocks)
             for b, c in track(grid, description="decode")]
    prefills = [run_prefill_case(1, n, cfg.block_size, prefill)
                for n in track(cfg.prefill_lengths, description="prefill")]
    writes = [time_write_kv(rows, cfg.block_size) for rows in (256, 8192)]
    sweeps = {"tile sweep": sweep_summary(tuning, "decode tiles", TILE_FIELDS),
              "merge sweep": sweep_summary(tuning, "decode merge", MERGE_FIELDS)}
    print_tables(cases, prefills, writes, ceilings, sweeps)
    Console().print(f"decode config: {decode}\nprefill config: {prefill}\n{machine}")
    write_json(out / "attention.json", {
        "machine": machine, "copy_bytes_per_s": ceilings.copy_bps, "read_bytes_per_s": ceilings.read_bps,
        "ceilings": ceilings.record(), "decode_config": decode, "prefill_config": prefill,
        "block_size": cfg.block_size, "decode": [c.record(ceilings) for c in cases], "prefill": prefills,
        "write_kv": writes, "tile_sweep": sweeps["tile sweep"], "merge_sweep": sweeps["merge sweep"],
        "tuning": tuning})
    write_json(out / "attention_calibration.json", {"device": machine.device, "model": "llama-3-8b", "measurements": [
        {"op": "decode_attention", "batch": c.batch, "context": c.context, "layers": 1, "seconds": c.seconds}
        for c in cases if not c.skipped]})
    plot(cases, ceilings, out / "attention.png")


if __name__ == "__main__":
    main()
