"""Triton building blocks shared by the paged attention kernels.

``kv_rows`` turns key positions of one sequence into element offsets of one KV head in a
cache laid out [num_blocks, block_size, H_kv, D]; ``softmax_step`` folds one tile of keys
and values into a flash-attention running state (row max ``m`` in log2 units, row sum
``l``, unnormalised output ``acc``). Scores are scaled by ``scale * log2(e)`` so the
kernels use exp2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # used inside kernels


STEP_VARYING_NOTE = """Integer kernel arguments that change from step to step (sequence and tile
counts, split counts, block-table widths, the strides of lse partials, which equal the split
count S) are in each kernel's ``do_not_specialize``: Triton would otherwise compile a variant per
class of value (1, a multiple of 16, other), i.e. again on the first step of each new batch
shape, seconds added to some request's latency. None feeds a vectorizable address: table
widths only locate a row whose entries are gathered one by one, lse partials are stored one
per head. (The strides of the out partials, multiples of the head dim, keep their class.)
Constexprs still chosen by shape compile once per value: the merge's PAIRS/PARTS (a handful),
the segment kernel's BLOCK_M, the fused merge's CHUNK; CUDA-graph capture at start-up compiles
the plain decode's."""


@triton.jit
def kv_rows(table_ptr, kpos, kvalid, head_offset, stride_block, stride_token, PAGE: tl.constexpr):
    """int64 offsets [BLOCK_N] of the rows at positions ``kpos`` (masked rows read page 0)."""
    page = tl.load(table_ptr + kpos // PAGE, mask=kvalid, other=0).to(tl.int64)
    return page * stride_block + (kpos % PAGE) * stride_token + head_offset


@triton.jit
def load_kv_tile(k_ptr, v_ptr, rows, d, kvalid, MASKED: tl.constexpr):
    """K and V [BLOCK_N, D] at the row offsets ``rows``; with MASKED, rows not ``kvalid`` are 0."""
    if MASKED:
        k = tl.load(k_ptr + rows[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] + d[None, :], mask=kvalid[:, None], other=0.0)
    else:
        k = tl.load(k_ptr + rows[:, None] + d[None, :])
        v = tl.load(v_ptr + rows[:, None] + d[None, :])
    return k, v


@triton.jit
def softmax_step(q, k, v, m, l, acc, qk_scale, mask, MASKED: tl.constexpr, PREC: tl.constexpr):
    """Attend q [M, D] to one tile k, v [N, D]; ``mask`` [M, N] or [1, N] where MASKED."""
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASKED:
        qk = tl.where(mask, qk, float("-inf"))
    m_new = tl.maximum(m, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l, acc


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 models get full-precision dots (Triton would use tf32); 16-bit ones are exact anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


def fit_block_n(block_n: int, dim: int, itemsize: int, stages: int, fixed_bytes: int, budget: int) -> int:
    """Halve the key tile (not below 16) until ``stages`` K and V tiles plus ``fixed_bytes`` fit ``budget``
    bytes of shared memory; wide heads in fp32 would otherwise fail to launch."""
    while block_n > 16 and fixed_bytes + 2 * block_n * dim * itemsize * stages > budget:
        block_n //= 2
    return block_n
