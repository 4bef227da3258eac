"""Split-K paged decode attention (flash-decoding): one query row per sequence.

The grid is (sequence, KV head, split). Each program owns the query heads of one GQA group,
so every K/V tile is loaded once for the whole group, and covers one contiguous slice of
its sequence's keys. The slice length is computed on the device from the live
``seq_lens[b]`` (``ceil(seq_len / splits)`` rounded up to the key tile), so the grid
depends only on host values and the launch is CUDA-graph capturable; a program whose slice
is empty writes the neutral partial (out 0, lse -inf). ``triton_merge.merge_partials``
combines the splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import (LN2, LOG2E, dot_precision, fit_block_n, kv_rows, next_power_of_2,
                                          softmax_step)

SHARED_BUDGET = 128 * 1024  # bytes of staged K/V tiles per program


@dataclass(frozen=True)
class DecodeConfig:
    """Tile and split choices for the decode kernel.

    block_n: keys per tile. programs_per_sm: how many (sequence, head, split) programs to
    aim for per multiprocessor; a batch that reaches it unsplit gets one split (no partials,
    no merge kernel). min_split_tokens: the shortest slice worth its own program (bounds the
    split count by ``max_seq_len``). max_splits: upper bound on the split count.
    heads_fastest: launch the KV heads of one (sequence, split) next to each other, so
    programs running together read neighbouring bytes of the same cache blocks.
    Defaults: the best of the sweeps in docs/kernels.md (H100, Llama-3-8B heads, bf16).
    """

    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 4
    min_split_tokens: int = 32
    max_splits: int = 64
    heads_fastest: bool = True

    def __post_init__(self) -> None:
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"DecodeConfig.block_n must be a power of two >= 16, got {self.block_n}")
        for name in ("num_warps", "num_stages", "programs_per_sm", "min_split_tokens", "max_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodeConfig.{name} must be >= 1, got {getattr(self, name)}")

    def num_splits(self, num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
        """Splits per (sequence, KV head): enough programs to fill the chip, none too short."""
        wanted = -(-self.programs_per_sm * num_sms // max(1, num_seqs * num_kv_heads))
        useful = -(-max(1, max_seq_len) // self.min_split_tokens)
        return max(1, min(wanted, useful, self.max_splits))


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
                         qk_scale, num_splits, stride_qt, stride_qh, stride_table,
                         stride_kb, stride_kt, stride_kh, stride_pn, stride_ph, stride_ps,
                         stride_ln, stride_lh, stride_ls, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_N: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                         PREC: tl.constexpr, HEADS_FASTEST: tl.constexpr):
    if HEADS_FASTEST:
        kv_head, split, seq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    else:
        seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + g
    d = tl.arange(0, D)
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=(g < GROUP)[:, None], other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    table = tables_ptr + seq.to(tl.int64) * stride_table
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        kvalid = kpos < end
        rows = kv_rows(table, kpos, kvalid, kv_head * stride_kh, stride_kb, stride_kt, PAGE)
        k = tl.load(k_ptr + rows[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
        m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, kvalid[None, :], True, PREC)

    l_safe = tl.where(l > 0, l, 1.0)
    lse = tl.where(l > 0, (m + tl.log2(l_safe)) * LN2, float("-inf"))
    out = acc / l_safe[:, None]
    live = g < GROUP
    base = seq * stride_pn + split * stride_ps
    tl.store(part_out_ptr + base + heads[:, None] * stride_ph + d[None, :],
             out.to(part_out_ptr.dtype.element_ty), mask=live[:, None])
    tl.store(part_lse_ptr + seq * stride_ln + heads * stride_lh + split * stride_ls, lse, mask=live)


def decode_partials(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                    part_out: torch.Tensor, part_lse: torch.Tensor, config: DecodeConfig) -> None:
    """Write split partials of q [B, H_q, D] into part_out [B, H_q, S, D], part_lse [B, H_q, S] (fp32).

    part_out is fp32 for merging; with a single split it may be the final output (a
    [B, H_q, 1, D] view in q's dtype), since one split is already normalised.

    Split ``s`` of sequence ``b`` covers keys ``[s * L, (s + 1) * L)`` clipped to
    ``seq_lens[b]``, where ``L = ceil(ceil(seq_lens[b] / S) / block_n) * block_n`` (``block_n`` is
    the config's, halved where wide fp32 tiles would not fit in shared memory).
    Shapes are assumed checked by the caller (see triton_backend).
    """
    num_seqs, num_heads, dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_splits = part_out.shape[2]
    group = num_heads // num_kv_heads
    block_n = fit_block_n(config.block_n, dim, q.element_size(), config.num_stages, 0, SHARED_BUDGET)
    grid = ((num_kv_heads, num_splits, num_seqs) if config.heads_fastest
            else (num_seqs, num_kv_heads, num_splits))
    _decode_split_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, scale * LOG2E, num_splits,
        q.stride(0), q.stride(1), block_tables.stride(0), *k_cache.stride()[:3],
        *part_out.stride()[:3], *part_lse.stride(), GROUP=group,
        BLOCK_G=max(16, next_power_of_2(group)), BLOCK_N=block_n, D=dim,
        PAGE=k_cache.shape[1], PREC=dot_precision(q.dtype), HEADS_FASTEST=config.heads_fastest,
        num_warps=config.num_warps, num_stages=config.num_stages)
