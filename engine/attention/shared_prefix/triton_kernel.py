"""The shared-prefix (Hydragen) segment kernel: one shared segment's keys against all its members.

A program takes one work item of ``shared_prefix.triton_layout`` (a segment's key chunk and a tile
of its members) and one KV head. Its ``BLOCK_M`` matrix rows are (member, query head)
pairs, ``BLOCK_M // GROUP`` members of the GQA group, so each K/V tile feeds a real matrix
product (``tl.dot`` of [BLOCK_M, D] by [D, BLOCK_N]) instead of the 1-row products of plain
decode; K/V are read once per member tile, not once per member, and the tiles of one chunk
run side by side so the repeats hit L2. Segments hold whole blocks and keys are unmasked
(every member sees all of them): only the chunk's last tile is masked. Each member gets a
partial ``(out, lse)`` in its slot of the shared partial buffers.

Pipelining. The K/V rows of a tile come from a block-table read. Read in the same iteration
as the tile (as before), Triton's software pipeliner spends a stage on that read: with 2
stages the copies of tile i+1 are issued after tile i's products and awaited at once at the
top of the next iteration, so every tile waited the full load latency (the kernel reached
303 TFLOP/s, 42% of matmul, at B256 x 16K). Here each iteration reads the table for the
*next* tile and carries its rows in registers, so the K/V loads depend on no load of their
own iteration: with ``num_stages`` 3 the copies of tile i+1 fly while tile i is computed
(checked in the TTGIR: ``async_wait {num = 2}``, three K/V buffers; 2 stages still wait).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl

from engine.attention.shared_prefix.triton_layout import ITEM_FIELDS
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

SHARED_BUDGET = 160 * 1024  # bytes of the query tile and staged K/V tiles per program
QUERY_TILE_BYTES = 32 * 1024  # the query tile shrinks (fp32, wide heads) until it fits this


@dataclass(frozen=True)
class SharedPrefixConfig:
    """Tiles, work split and launch of the segment kernel.

    block_m: (member, head) rows per tile (a ceiling: small groups of members get a smaller
    tile). block_n: keys per tile. programs_per_sm: how many (item, KV head) programs fit on
    a multiprocessor at once (registers and shared memory decide; see docs/kernels.md); the
    key chunks are sized to whole waves of that many programs. min_chunk_tokens: the
    shortest key chunk (each chunk costs every member one fp32 partial to write and merge).
    maxnreg: a register cap per thread for the segment kernel (0: the compiler's choice), to
    leave registers for suffix-decode programs beside it. overlap_suffix: run the suffix
    decode on a second CUDA stream beside the segment kernel.

    Defaults (by prediction, not yet measured: docs/kernels.md, "Shared-prefix"): 128-row
    tiles over 8 warps read each K/V tile from L2 half as often as 64-row tiles, 3 stages
    keep copies in flight, and capped at 192 registers one program (48K registers, 128 KB
    shared) leaves room for two suffix-decode programs (8K registers, 21.5 KB each) per SM.
    """

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    programs_per_sm: int = 1
    min_chunk_tokens: int = 128
    overlap_suffix: bool = True
    maxnreg: int = 192

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"SharedPrefixConfig.{name} must be a power of two >= 16, got {size}")
        for name in ("num_warps", "num_stages", "programs_per_sm", "min_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"SharedPrefixConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.maxnreg and not 32 <= self.maxnreg <= 255:
            raise ValueError(f"SharedPrefixConfig.maxnreg must be 0 (no cap) or 32..255, got {self.maxnreg}")

    @property
    def launch_options(self) -> dict[str, int]:
        """Triton launch options of the segment kernel."""
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return {**options, "maxnreg": self.maxnreg} if self.maxnreg else options

    @functools.cached_property
    def as_ints(self) -> tuple[int, ...]:
        """Every field as an int (a cache key; computed once per config)."""
        return tuple(int(getattr(self, f.name)) for f in fields(self))

    def tiles(self, group: int, dim: int, itemsize: int, max_members: int) -> tuple[int, int]:
        """(block_m, block_n) for this model and the largest segment's member count."""
        floor = max(16, next_power_of_2(group))
        block_m = max(floor, min(self.block_m, next_power_of_2(max_members * group)))
        while block_m > floor and block_m * dim * itemsize > QUERY_TILE_BYTES:
            block_m //= 2
        block_n = fit_block_n(self.block_n, dim, itemsize, self.num_stages, block_m * dim * itemsize,
                              SHARED_BUDGET)
        return block_m, block_n


# Step-varying integer arguments: see triton_paged.STEP_VARYING_NOTE (S, the slot count, is the plan's).
STEP_VARYING_SEGMENTS = ("stride_ln", "stride_lh")


@triton.jit(do_not_specialize=STEP_VARYING_SEGMENTS)
def _segment_kernel(q_ptr, k_ptr, v_ptr, blocks_ptr, items_ptr, member_rows_ptr, member_slots_ptr,
                    part_out_ptr, part_lse_ptr, qk_scale, stride_qt, stride_qh, stride_kb, stride_kt,
                    stride_kh, stride_pn, stride_ph, stride_ps, stride_ln, stride_lh, stride_ls,
                    FIELDS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, PREC: tl.constexpr):
    item = items_ptr + tl.program_id(0) * FIELDS
    kv_head = tl.program_id(1)
    table = blocks_ptr + tl.load(item)
    first = tl.load(item + 1)
    end = tl.load(item + 2)
    member_offset = tl.load(item + 3)
    live = tl.arange(0, BLOCK_M) // GROUP < tl.load(item + 4)
    member = member_offset + tl.arange(0, BLOCK_M) // GROUP
    row = tl.load(member_rows_ptr + member, mask=live, other=0).to(tl.int64)
    slot = tl.load(member_slots_ptr + member, mask=live, other=0) + tl.load(item + 5)
    heads = kv_head * GROUP + tl.arange(0, BLOCK_M) % GROUP
    d = tl.arange(0, D)
    q = tl.load(q_ptr + row[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=live[:, None], other=0.0)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    head_offset = kv_head * stride_kh
    full_end = first + (end - first) // BLOCK_N * BLOCK_N
    # Rows of the next tile are looked up one iteration ahead (see the module docstring).
    kpos = first + tl.arange(0, BLOCK_N)
    rows = kv_rows(table, kpos, kpos < end, head_offset, stride_kb, stride_kt, PAGE)
    for n0 in range(first, full_end, BLOCK_N):
        k, v = load_kv_tile(k_ptr, v_ptr, rows, d, None, False)
        kpos = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
        rows = kv_rows(table, kpos, kpos < end, head_offset, stride_kb, stride_kt, PAGE)
        m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, None, False, PREC)
    if full_end < end:  # the chunk's partial last tile: rows already point at it (rows past end at page 0)
        kvalid = full_end + tl.arange(0, BLOCK_N) < end
        k, v = load_kv_tile(k_ptr, v_ptr, rows, d, kvalid, True)
        m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, kvalid[None, :], True, PREC)

    lse = (m + tl.log2(l)) * LN2  # chunks are never empty, so l > 0
    out = acc / l[:, None]
    out_rows = part_out_ptr + row * stride_pn + heads * stride_ph + slot * stride_ps
    tl.store(out_rows[:, None] + d[None, :], out.to(part_out_ptr.dtype.element_ty), mask=live[:, None])
    tl.store(part_lse_ptr + row * stride_ln + heads * stride_lh + slot * stride_ls, lse, mask=live)


def segment_partials(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor,
                     items: torch.Tensor, member_rows: torch.Tensor, member_slots: torch.Tensor, scale: float,
                     part_out: torch.Tensor, part_lse: torch.Tensor, tiles: tuple[int, int],
                     config: SharedPrefixConfig) -> None:
    """Write every work item's partials into part_out [B, H_q, S, D] and part_lse [B, H_q, S] (fp32).

    ``blocks``, ``items`` ([num_items, ITEM_FIELDS]), ``member_rows`` and ``member_slots`` are
    int32 device copies of a ``triton_layout.SegmentWork``; ``tiles`` is
    ``config.tiles(...)`` with the members per tile the layout was built for
    (``block_m // group``). Shapes are assumed checked by the caller.
    """
    num_heads, dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if items.shape[0] == 0:
        return
    block_m, block_n = tiles
    _segment_kernel[(items.shape[0], num_kv_heads)](
        q, k_cache, v_cache, blocks, items, member_rows, member_slots, part_out, part_lse, scale * LOG2E,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *part_out.stride()[:3], *part_lse.stride(),
        FIELDS=ITEM_FIELDS, GROUP=num_heads // num_kv_heads, BLOCK_M=block_m, BLOCK_N=block_n, D=dim,
        PAGE=k_cache.shape[1], PREC=dot_precision(q.dtype), **config.launch_options)
