"""Paged causal attention for mixed batches (prefill chunks and decode rows together).

Each program takes a tile of up to ``BLOCK_Q`` consecutive query rows of one sequence for
all query heads of one KV group: its ``BLOCK_M = BLOCK_Q * GROUP_PAD`` matrix rows are
(query row, head) pairs, so each K/V tile is loaded once per group. Query row ``j`` of
sequence ``i`` sits at position ``seq_lens[i] - q_len_i + j``. Keys past the tile's last
query are never visited; tiles every row sees whole skip the causal mask.

Tiles are numbered without a host sync: sequence ``i``'s tiles start at
``query_start_loc[i] // BLOCK_Q + i``, so ``T // BLOCK_Q + B`` programs cover any batch,
and each finds its sequence by binary search (programs in the gaps exit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.attention.metadata import AttentionMetadata
from engine.attention.triton_paged import (
    LOG2E,
    dot_precision,
    fit_block_n,
    kv_rows,
    load_kv_tile,
    next_power_of_2,
    softmax_step,
)

SHARED_BUDGET = 192 * 1024  # bytes of the query tile and staged K/V tiles per program


@dataclass(frozen=True)
class PrefillConfig:
    """Tile choices: block_m rows of (query, head) pairs against block_n keys."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"PrefillConfig.{name} must be a power of two >= 16, got {size}")
        if self.num_warps < 1 or self.num_stages < 1:
            raise ValueError("PrefillConfig.num_warps and num_stages must be >= 1")

    def block_q(self, group_pad: int, dim: int) -> int:
        """Query rows per tile: block_m over the padded group, halved for heads wider than 128."""
        rows = max(1, self.block_m // group_pad)
        return rows // 2 if dim > 128 and rows > 1 and rows * group_pad > 16 else rows


@triton.jit
def _find_sequence(starts_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """The last sequence i with starts[i] // BLOCK_Q + i <= tile."""
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = tl.load(starts_ptr + mid) // BLOCK_Q + mid <= tile
        lo = tl.where(fits, mid, lo)
        hi = tl.where(fits, hi, mid - 1)
    return lo


# Step-varying integer arguments: see triton_paged.STEP_VARYING_NOTE.
STEP_VARYING_PREFILL = ("num_seqs", "num_tiles", "stride_table")


@triton.jit(do_not_specialize=STEP_VARYING_PREFILL)
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, seq_lens_ptr, starts_ptr,
                    qk_scale, num_seqs, num_tiles, stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_table, stride_kb, stride_kt, stride_kh, GROUP: tl.constexpr,
                    GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                    D: tl.constexpr, PAGE: tl.constexpr, PREC: tl.constexpr):
    tile = num_tiles - 1 - tl.program_id(0)  # late (longest) tiles first
    kv_head = tl.program_id(1)
    seq = _find_sequence(starts_ptr, num_seqs, tile, BLOCK_Q)
    q_start = tl.load(starts_ptr + seq)
    q_len = tl.load(starts_ptr + seq + 1) - q_start
    first = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if first < q_len:
        context = tl.load(seq_lens_ptr + seq) - q_len
        r = tl.arange(0, BLOCK_Q * GROUP_PAD)
        q_row = first + r // GROUP_PAD
        g = r % GROUP_PAD
        heads = kv_head * GROUP + g
        live = (q_row < q_len) & (g < GROUP)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (q_start + q_row)[:, None] * stride_qt + heads[:, None] * stride_qh
                    + d[None, :], mask=live[:, None], other=0.0)
        q_pos = context + q_row
        m = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
        acc = tl.zeros([BLOCK_Q * GROUP_PAD, D], tl.float32)
        table = tables_ptr + seq.to(tl.int64) * stride_table
        head_offset = kv_head * stride_kh
        seen_by_all = (context + first + 1) // BLOCK_N * BLOCK_N
        for n0 in range(0, seen_by_all, BLOCK_N):
            kpos = n0 + tl.arange(0, BLOCK_N)
            rows = kv_rows(table, kpos, kpos >= 0, head_offset, stride_kb, stride_kt, PAGE)
            k, v = load_kv_tile(k_ptr, v_ptr, rows, d, None, False)
            m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, None, False, PREC)
        end = context + tl.minimum(first + BLOCK_Q, q_len)
        for n0 in range(seen_by_all, end, BLOCK_N):
            kpos = n0 + tl.arange(0, BLOCK_N)
            kvalid = kpos < end
            rows = kv_rows(table, kpos, kvalid, head_offset, stride_kb, stride_kt, PAGE)
            k, v = load_kv_tile(k_ptr, v_ptr, rows, d, kvalid, True)
            causal = (kpos[None, :] <= q_pos[:, None]) & kvalid[None, :]
            m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, causal, True, PREC)
        out = acc / l[:, None]
        tl.store(out_ptr + (q_start + q_row)[:, None] * stride_ot + heads[:, None] * stride_oh
                 + d[None, :], out.to(out_ptr.dtype.element_ty), mask=live[:, None])


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, scale: float, out: torch.Tensor,
                      config: PrefillConfig) -> None:
    """Causal attention of q [T, H_q, D] over the paged cache into ``out`` [T, H_q, D]."""
    rows, num_heads, dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    group_pad = next_power_of_2(group)
    block_q = config.block_q(group_pad, dim)
    row_bytes = dim * q.element_size()
    block_n = fit_block_n(config.block_n, dim, q.element_size(), config.num_stages,
                          block_q * group_pad * row_bytes, SHARED_BUDGET)
    num_tiles = rows // block_q + meta.num_seqs
    _prefill_kernel[(num_tiles, num_kv_heads)](
        q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        scale * LOG2E, meta.num_seqs, num_tiles, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), meta.block_tables.stride(0), *k_cache.stride()[:3], GROUP=group,
        GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_N=block_n, D=dim,
        PAGE=k_cache.shape[1], PREC=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages)
