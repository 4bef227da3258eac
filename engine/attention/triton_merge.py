"""Merging partial attention results by log-sum-exp.

A partial is ``(out_s, lse_s)``: attention of a query over one subset ``s`` of its keys,
normalised within the subset, with ``lse_s = log(sum(exp(scale * q.k)))`` over that subset
(natural log; ``-inf`` and ``out_s = 0`` for an empty subset). Over disjoint subsets the
full result is ``sum_s exp(lse_s - lse) * out_s`` with ``lse = logsumexp_s(lse_s)``.
Split-K decode merges its KV splits this way; a shared-prefix kernel can merge prefix and
suffix partials written side by side in the same buffers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import next_power_of_2


@triton.jit
def _merge_kernel(part_out_ptr, part_lse_ptr, out_ptr, num_parts,
                  stride_pn, stride_ph, stride_ps, stride_ln, stride_lh, stride_ls,
                  stride_on, stride_oh, D: tl.constexpr, PARTS: tl.constexpr):
    row = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, PARTS)
    live = s < num_parts
    lse = tl.load(part_lse_ptr + row * stride_ln + head * stride_lh + s * stride_ls,
                  mask=live, other=float("-inf"))
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp(lse - top)
    total = tl.sum(weight, 0)
    d = tl.arange(0, D)
    parts = tl.load(part_out_ptr + row * stride_pn + head * stride_ph + s[:, None] * stride_ps
                    + d[None, :], mask=live[:, None], other=0.0)
    merged = tl.sum(parts * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + row * stride_on + head * stride_oh + d, merged.to(out_ptr.dtype.element_ty))


def merge_partials(part_out: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``out`` [N, H, D] from partials ``part_out`` [N, H, S, D] and ``part_lse`` [N, H, S].

    Rows whose partials are all empty come out as zeros. The last dimension of
    ``part_out`` and ``out`` must be contiguous.
    """
    n, heads, parts, dim = part_out.shape
    if part_lse.shape != (n, heads, parts) or out.shape != (n, heads, dim):
        raise ValueError(f"merge_partials: part_out {tuple(part_out.shape)}, part_lse "
                         f"{tuple(part_lse.shape)} and out {tuple(out.shape)} do not agree")
    if part_out.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("merge_partials: the head dimension of part_out and out must be contiguous")
    if n == 0:
        return
    _merge_kernel[(n, heads)](
        part_out, part_lse, out, parts, *part_out.stride()[:3], *part_lse.stride(),
        *out.stride()[:2], D=dim, PARTS=next_power_of_2(parts), num_warps=4 if dim >= 128 else 2)
