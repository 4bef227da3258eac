"""Split-K paged decode attention (flash-decoding): one query row per sequence.

The grid is (sequence, KV head, split). Each program owns the query heads of one GQA group,
so every K/V tile is loaded once for the whole group, and covers one contiguous slice of
its sequence's keys. The slice length is computed on the device from the live
``seq_lens[b]`` (``ceil(seq_len / splits)`` rounded up to the key tile), so the grid
depends only on host values and the launch is CUDA-graph capturable; a program whose slice
is empty writes the neutral partial (out 0, lse -inf).

Splits are combined in one of two ways. ``decode_partials`` only writes the partials and
``triton_merge.merge_partials`` combines them in a second launch (the shared-prefix path
needs exactly that: it merges decode partials with its own). ``decode_merged`` fuses the
merge: after writing its partial a program counts itself in on a per-(sequence, KV head)
int32 counter, and the program that arrives last merges the group's splits into the output
and sets the counter back to 0, saving the second launch (~3 µs in a CUDA graph, the main
gap to SDPA at small and mid batch sizes).

Pipelining. The K/V rows of a tile come from a block-table read. Read in the same iteration
as the tile, Triton 3.6's software pipeliner gives that read a stage of its own, and the
tile's copies are awaited at once (``async_wait {num = 0}`` in the sm_90 TTGIR at 2, 3 and 4
stages): each tile waits the whole load latency, hidden only by the other programs on the
SM. With ``DecodeConfig.table_lookahead`` each iteration reads the table for the next tile
and carries its rows, so the K/V loads depend on no load of their own iteration; at 3 stages
the TTGIR then keeps the next tile's copies in flight while one is computed (``num = 2``,
37 KB of shared memory against 21.5 KB), at 4 stages two (``num = 4``, 54 KB). The
shared-prefix segment kernel does the same (``shared_prefix.triton_kernel``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import (
    LN2,
    LOG2E,
    dot_precision,
    fit_block_n,
    kv_rows,
    load_kv_tile,
    next_power_of_2,
    softmax_step,
)

SHARED_BUDGET = 128 * 1024  # bytes of staged K/V tiles per program
# fp32 partial elements the last program loads per merge step: 32 per thread at 4 warps. The
# kernel stays at 64 registers (sm_90 compile, Llama-3-8B heads); 8192 would take it to 96.
MERGE_TILE = 4096


@dataclass(frozen=True)
class DecodeConfig:
    """Tile and split choices for the decode kernel.

    block_n: keys per tile. programs_per_sm: how many (sequence, head, split) programs to
    aim for per multiprocessor; a batch that reaches it unsplit gets one split (no partials,
    no merge). min_split_tokens: the shortest slice worth its own program (bounds the
    split count by ``max_seq_len``). max_splits: upper bound on the split count.
    heads_fastest: launch the KV heads of one (sequence, split) next to each other, so
    programs running together read neighbouring bytes of the same cache blocks.
    fused_merge: the last split of each (sequence, KV head) merges the partials in the same
    launch (``decode_merged``) instead of a second merge kernel.
    table_lookahead: each iteration reads the block table for the *next* key tile and carries
    its rows, so a tile's K/V loads depend on no load of their own iteration and the software
    pipeliner can keep ``num_stages - 1`` tiles in flight (see the module docstring).
    Defaults: the best of the sweeps in docs/kernels.md (H100, Llama-3-8B heads, bf16).
    fused_merge is off: measured slower on an H100 (docs/kernels.md). table_lookahead is off
    until its sweep has run on an H100; the benchmark and tests exercise every combination.
    """

    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 4
    min_split_tokens: int = 32
    max_splits: int = 64
    heads_fastest: bool = True
    fused_merge: bool = False
    table_lookahead: bool = False

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
def _merge_group(part_out_ptr, part_lse_ptr, out_ptr, seq, kv_head, num_splits,
                 stride_pn, stride_ph, stride_ps, stride_ln, stride_lh, stride_ls, stride_on, stride_oh,
                 GROUP: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr):
    """Write the output of one (sequence, KV group) from its ``num_splits`` partials.

    The same log-sum-exp weights as ``triton_merge`` (``exp(lse_s - max lse)``), taken
    ``CHUNK`` splits at a time so the loads of a chunk are all in flight together (one
    step covers every split at usual split counts); later chunks rescale the running sums.
    Loads bypass L1 (``.cg``): the partials were written by other programs.
    """
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    heads = kv_head * GROUP + g
    live_g = g < GROUP
    top = tl.full([G_PAD], float("-inf"), tl.float32)
    total = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for s0 in range(0, num_splits, CHUNK):
        s = s0 + tl.arange(0, CHUNK)
        live = (s < num_splits)[:, None] & live_g[None, :]
        lse = tl.load(part_lse_ptr + seq * stride_ln + heads[None, :] * stride_lh + s[:, None] * stride_ls,
                      mask=live, other=float("-inf"), cache_modifier=".cg")
        parts = tl.load(part_out_ptr + seq * stride_pn + s[:, None, None] * stride_ps
                        + heads[None, :, None] * stride_ph + d[None, None, :],
                        mask=live[:, :, None], other=0.0, cache_modifier=".cg")
        new_top = tl.maximum(top, tl.max(lse, 0))
        base = tl.where(new_top == float("-inf"), 0.0, new_top)  # all empty so far: weights 0, not NaN
        weight = tl.exp(lse - base[None, :])
        rescale = tl.exp(top - base)
        acc = acc * rescale[:, None] + tl.sum(parts * weight[:, :, None], 0)
        total = total * rescale + tl.sum(weight, 0)
        top = new_top
    merged = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(out_ptr + seq * stride_on + heads[:, None] * stride_oh + d[None, :],
             merged.to(out_ptr.dtype.element_ty), mask=live_g[:, None])


# Step-varying integer arguments: see triton_paged.STEP_VARYING_NOTE.
STEP_VARYING_DECODE = ("num_splits", "stride_table", "stride_ln", "stride_lh")


@triton.jit(do_not_specialize=STEP_VARYING_DECODE)
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
                         out_ptr, counters_ptr, qk_scale, num_splits, num_kv_heads, stride_qt, stride_qh,
                         stride_table, stride_kb, stride_kt, stride_kh, stride_pn, stride_ph, stride_ps,
                         stride_ln, stride_lh, stride_ls, stride_on, stride_oh, GROUP: tl.constexpr,
                         BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                         PREC: tl.constexpr, HEADS_FASTEST: tl.constexpr, MERGE: tl.constexpr,
                         G_PAD: tl.constexpr, CHUNK: tl.constexpr, LOOKAHEAD: tl.constexpr):
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
    head_offset = kv_head * stride_kh
    if LOOKAHEAD:  # rows of the next tile are read one iteration ahead
        kpos = start + tl.arange(0, BLOCK_N)
        rows = kv_rows(table, kpos, kpos < end, head_offset, stride_kb, stride_kt, PAGE)
        for n0 in range(start, end, BLOCK_N):
            kvalid = n0 + tl.arange(0, BLOCK_N) < end
            k, v = load_kv_tile(k_ptr, v_ptr, rows, d, kvalid, True)
            kpos = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
            rows = kv_rows(table, kpos, kpos < end, head_offset, stride_kb, stride_kt, PAGE)
            m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, kvalid[None, :], True, PREC)
    else:
        for n0 in range(start, end, BLOCK_N):
            kpos = n0 + tl.arange(0, BLOCK_N)
            kvalid = kpos < end
            rows = kv_rows(table, kpos, kvalid, head_offset, stride_kb, stride_kt, PAGE)
            k, v = load_kv_tile(k_ptr, v_ptr, rows, d, kvalid, True)
            m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, kvalid[None, :], True, PREC)

    l_safe = tl.where(l > 0, l, 1.0)
    lse = tl.where(l > 0, (m + tl.log2(l_safe)) * LN2, float("-inf"))
    out = acc / l_safe[:, None]
    live = g < GROUP
    base = seq * stride_pn + split * stride_ps
    tl.store(part_out_ptr + base + heads[:, None] * stride_ph + d[None, :],
             out.to(part_out_ptr.dtype.element_ty), mask=live[:, None])
    tl.store(part_lse_ptr + seq * stride_ln + heads * stride_lh + split * stride_ls, lse, mask=live)
    if MERGE:
        # Every thread's partial stores come before the barrier, the barrier before the
        # counter's release (acq_rel, GPU scope: cumulative over the CTA after the barrier),
        # so the program that counts last, having acquired, sees all splits' partials.
        tl.debug_barrier()
        counter = counters_ptr + seq * num_kv_heads + kv_head
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == num_splits - 1:
            tl.store(counter, 0)  # no other program of this launch touches it again: clean for the next
            _merge_group(part_out_ptr, part_lse_ptr, out_ptr, seq, kv_head, num_splits,
                         stride_pn, stride_ph, stride_ps, stride_ln, stride_lh, stride_ls, stride_on, stride_oh,
                         GROUP, G_PAD, D, CHUNK)


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
    _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, part_out, part_lse, None, None, config)


def decode_merged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                  part_out: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor,
                  counters: torch.Tensor, config: DecodeConfig) -> None:
    """``decode_partials`` and the merge into ``out`` [B, H_q, D] in one launch.

    ``counters``: int32, at least ``B * H_kv`` elements, all zero on entry; the launch leaves
    them zero. Launches sharing a counter buffer must not run concurrently (two streams);
    one after the other on a stream, or replayed in CUDA graphs, they may.
    """
    num_kv_heads = k_cache.shape[2]
    if counters.dtype != torch.int32 or counters.numel() < q.shape[0] * num_kv_heads:
        raise ValueError(f"decode_merged needs int32 counters for {q.shape[0]} x {num_kv_heads} (sequence, "
                         f"KV head) pairs, got {counters.dtype} [{counters.numel()}]")
    _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, part_out, part_lse, out, counters, config)


def merge_chunk(num_splits: int, group: int, dim: int) -> int:
    """Splits the fused merge loads per step: all of them where ``MERGE_TILE`` allows."""
    return max(1, min(next_power_of_2(num_splits), MERGE_TILE // (next_power_of_2(group) * dim)))


def _launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
            seq_lens: torch.Tensor, scale: float, part_out: torch.Tensor, part_lse: torch.Tensor,
            out: torch.Tensor | None, counters: torch.Tensor | None, config: DecodeConfig) -> None:
    num_seqs, num_heads, dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_splits = part_out.shape[2]
    group = num_heads // num_kv_heads
    merge = out is not None
    block_n = fit_block_n(config.block_n, dim, q.element_size(), config.num_stages, 0, SHARED_BUDGET)
    grid = ((num_kv_heads, num_splits, num_seqs) if config.heads_fastest
            else (num_seqs, num_kv_heads, num_splits))
    out_strides = out.stride()[:2] if out is not None else (0, 0)
    _decode_split_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse,
        out if merge else part_out, counters if merge else seq_lens, scale * LOG2E, num_splits, num_kv_heads,
        q.stride(0), q.stride(1), block_tables.stride(0), *k_cache.stride()[:3],
        *part_out.stride()[:3], *part_lse.stride(), *out_strides, GROUP=group,
        BLOCK_G=max(16, next_power_of_2(group)), BLOCK_N=block_n, D=dim,
        PAGE=k_cache.shape[1], PREC=dot_precision(q.dtype), HEADS_FASTEST=config.heads_fastest,
        MERGE=merge, G_PAD=next_power_of_2(group), CHUNK=merge_chunk(num_splits, group, dim) if merge else 1,
        LOOKAHEAD=config.table_lookahead, num_warps=config.num_warps, num_stages=config.num_stages)
