"""Does the paged cache's physical layout or page size close the decode gap to SDPA?

  PYTHONPATH=. python -m benchmarks.decode_layout --out out/decode-layout

The engine's cache is ``[num_blocks, block_size, num_kv_heads, head_dim]`` (token-major, "NHD"):
one KV head's rows of a page are ``head_dim`` elements each, ``num_kv_heads * head_dim`` apart.
The decode kernel only sees strides, so the same logical view over a head-major page
(``[num_blocks, num_kv_heads, block_size, head_dim]`` storage, "HND": each head's page is one
contiguous run, as SDPA's per-head K/V are) runs unchanged. Every (layout, page size)
variant is timed as a CUDA-graph replay of the engine's decode forward on the same
shuffled block tables, next to SDPA on contiguous K/V in the same process; the outputs of
each variant are checked against the token-major run's.
The TMA page-tile kernel measured with ``--tma-stages`` on 2026-11-23 lives in the commit that
added it (BENCHMARKS.md); it lost and was removed.
Writes decode_layout.json and decode_layout.png to --out.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, replace

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.attention import DIM, DTYPE, HEADS, KV_HEADS, decode_batch, decode_bytes, time_forward, time_sdpa
from benchmarks.common import copy_bandwidth, machine_info, out_dir, write_json
from engine.attention.triton_backend import TritonAttention
from engine.attention.triton_decode import DecodeConfig


@dataclass(frozen=True)
class Variant:
    layout: str  # "NHD" (the engine's) or "HND"
    block_size: int

    @property
    def name(self) -> str:
        return f"{self.layout} p{self.block_size}"


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """The same logical [blocks, page, heads, dim] tensor over head-major storage."""
    return cache.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)


def run_case(batch: int, context: int, variants: list[Variant], base: DecodeConfig) -> dict[str, object]:
    row: dict[str, object] = {"batch": batch, "context": context, "nbytes": decode_bytes(batch, context)}
    for block_size in sorted({v.block_size for v in variants}):
        b = decode_batch(batch, context, block_size, seed=batch * 7 + context)
        expected = TritonAttention(decode=base).forward(b.q, b.k_cache, b.v_cache, b.meta, b.scale)
        for layout in ("NHD", "HND"):
            mine = [v for v in variants if v.block_size == block_size and v.layout == layout]
            if not mine:
                continue
            if layout == "HND":
                b = replace(b, k_cache=head_major(b.k_cache), v_cache=head_major(b.v_cache))
            for v in mine:
                backend = TritonAttention(decode=base)
                out = backend.forward(b.q, b.k_cache, b.v_cache, b.meta, b.scale)
                if not torch.equal(out, expected):
                    raise AssertionError(f"{v.name} differs from NHD at {batch}x{context}: max "
                                         f"{(out.float() - expected.float()).abs().max().item():.3g}")
                row[v.name] = time_forward(backend, b)
        del b, expected
        torch.cuda.empty_cache()
    q = torch.randn(batch, HEADS, 1, DIM, dtype=DTYPE, device="cuda")
    k, v = (torch.randn(batch, KV_HEADS, context, DIM, dtype=DTYPE, device="cuda") for _ in "kv")
    row["SDPA"], row["sdpa_path"] = time_sdpa(q, k, v, causal=False)
    del q, k, v
    torch.cuda.empty_cache()
    return row


def plot(rows: list[dict[str, object]], names: list[str], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['batch']}x{r['context']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([x + i * width for x in range(len(rows))], [r["SDPA"] / r[name] for r in rows], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], labels)
    ax.set_ylabel("speed vs SDPA (contiguous K/V)")
    ax.set_ylim(0.8, 1.1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("paged decode attention: cache layout x page size (bf16, Llama-3-8B heads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--block-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--layouts", nargs="+", default=["NHD", "HND"], choices=["NHD", "HND"])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decode_layout needs a CUDA device")
    out = out_dir(a.out, "decode-layout")
    base = DecodeConfig()
    variants = [Variant(layout, bs) for bs, layout in itertools.product(a.block_sizes, a.layouts)]
    names = [v.name for v in variants]
    copy = copy_bandwidth(torch.device("cuda"))
    cases = list(itertools.product(a.batches, a.contexts))
    rows = [run_case(b, c, variants, base) for b, c in track(cases, description="cases")]
    table = Table(title=f"decode µs (CUDA-graph replay); speed vs SDPA in brackets; copy {copy / 1e9:.0f} GB/s")
    for col in ("batch", "context", *names, "SDPA"):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [f"{r[n] * 1e6:.1f} ({r['SDPA'] / r[n]:.2f}x)" for n in names]
        table.add_row(str(r["batch"]), str(r["context"]), *cells, f"{r['SDPA'] * 1e6:.1f}")
    Console(width=250).print(table)
    write_json(out / "decode_layout.json", {"machine": machine_info(torch.device("cuda")), "config": base,
                                            "copy_bytes_per_s": copy, "rows": rows})
    plot(rows, names, out / "decode_layout.png")


if __name__ == "__main__":
    main()
