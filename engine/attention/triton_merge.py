"""Merging partial attention results by log-sum-exp.

A partial is ``(out_s, lse_s)``: attention of a query over one subset ``s`` of its keys,
normalised within the subset, with ``lse_s = log(sum(exp(scale * q.k)))`` over that subset
(natural log; ``-inf`` for an empty subset). Over disjoint subsets the full result is
``sum_s exp(lse_s - lse) * out_s`` with ``lse = logsumexp_s(lse_s)``.
Split-K decode merges its KV splits this way; the shared-prefix path merges prefix and
suffix partials written side by side in the same buffers.

The merge is pure data movement (it reads every partial once), so it must run near copy
bandwidth. One program takes ``PAIRS`` consecutive (row, head) pairs and ``PARTS`` partials
of each per step: with few partials (shared-prefix steps have 3-10) a program still loads
~16 KB per step in 16-byte vectors, instead of one ~2 KB program per (row, head), which ran
at 0.6 TB/s (docs/kernels.md). Partials whose lse is ``-inf`` are not read at all, so an
empty subset may leave any values (even NaN) in ``out_s``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import next_power_of_2

STEP_ELEMENTS = 4096  # fp32 partial elements one program loads per step (32 per thread at 4 warps)
MAX_PAIRS = 64
MIN_PROGRAMS = 128  # small merges keep at least this many programs (about one per SM)


# Step-varying integer arguments: see triton_paged.STEP_VARYING_NOTE.
STEP_VARYING_MERGE = ("num_pairs", "num_parts", "stride_ln", "stride_lh")


@triton.jit(do_not_specialize=STEP_VARYING_MERGE)
def _merge_kernel(part_out_ptr, part_lse_ptr, out_ptr, num_pairs, num_heads, num_parts,
                  stride_pn, stride_ph, stride_ps, stride_ln, stride_lh, stride_ls,
                  stride_on, stride_oh, D: tl.constexpr, PAIRS: tl.constexpr, PARTS: tl.constexpr):
    pair = tl.program_id(0) * PAIRS + tl.arange(0, PAIRS)
    live = pair < num_pairs
    row = (pair // num_heads).to(tl.int64)
    head = pair % num_heads
    lse_base = part_lse_ptr + row * stride_ln + head * stride_lh
    part_base = part_out_ptr + row * stride_pn + head * stride_ph
    d = tl.arange(0, D)
    top = tl.full([PAIRS], float("-inf"), tl.float32)
    total = tl.zeros([PAIRS], tl.float32)
    acc = tl.zeros([PAIRS, D], tl.float32)
    for s0 in range(0, num_parts, PARTS):  # one step at usual partial counts
        s = s0 + tl.arange(0, PARTS)
        lse = tl.load(lse_base[:, None] + s[None, :] * stride_ls, mask=live[:, None] & (s < num_parts)[None, :],
                      other=float("-inf"))
        filled = lse > float("-inf")
        parts = tl.load(part_base[:, None, None] + s[None, :, None] * stride_ps + d[None, None, :],
                        mask=filled[:, :, None], other=0.0)
        new_top = tl.maximum(top, tl.max(lse, 1))
        base = tl.where(new_top == float("-inf"), 0.0, new_top)  # nothing filled yet: weights 0, not NaN
        weight = tl.exp(lse - base[:, None])
        rescale = tl.exp(top - base)
        acc = acc * rescale[:, None] + tl.sum(parts * weight[:, :, None], 1)
        total = total * rescale + tl.sum(weight, 1)
        top = new_top
    merged = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(out_ptr + (row * stride_on + head * stride_oh)[:, None] + d[None, :],
             merged.to(out_ptr.dtype.element_ty), mask=live[:, None])


def merge_tiles(pairs: int, parts: int, dim: int) -> tuple[int, int]:
    """(PAIRS, PARTS) per program step: ~STEP_ELEMENTS partial elements, at least MIN_PROGRAMS programs."""
    parts_per_step = min(next_power_of_2(parts), max(1, STEP_ELEMENTS // dim))
    per_program = min(MAX_PAIRS, max(1, STEP_ELEMENTS // (parts_per_step * dim)))
    while per_program > 1 and -(-pairs // per_program) < MIN_PROGRAMS:
        per_program //= 2
    return per_program, parts_per_step


def merge_partials(part_out: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``out`` [N, H, D] from partials ``part_out`` [N, H, S, D] and ``part_lse`` [N, H, S].

    Rows whose partials are all empty (lse ``-inf``) come out as zeros. The last dimension
    of ``part_out`` and ``out`` must be contiguous; other strides are free (views work).
    """
    n, heads, parts, dim = part_out.shape
    if part_lse.shape != (n, heads, parts) or out.shape != (n, heads, dim):
        raise ValueError(f"merge_partials: part_out {tuple(part_out.shape)}, part_lse "
                         f"{tuple(part_lse.shape)} and out {tuple(out.shape)} do not agree")
    if part_out.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("merge_partials: the head dimension of part_out and out must be contiguous")
    if n == 0 or heads == 0:
        return
    pairs, (per_program, per_step) = n * heads, merge_tiles(n * heads, max(1, parts), dim)
    _merge_kernel[(triton.cdiv(pairs, per_program),)](
        part_out, part_lse, out, pairs, heads, parts, *part_out.stride()[:3], *part_lse.stride(),
        *out.stride()[:2], D=dim, PAIRS=per_program, PARTS=per_step, num_warps=4)
