"""Scattering a step's new keys and values into the paged cache.

One program per token row copies all its KV heads into both caches; rows whose slot is
negative (padding) write nothing. No host synchronisation, so it can be graph-captured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import next_power_of_2


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, num_kv_heads,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_ct, stride_ch,
                     PAGE: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr):
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, D)
        live = (h < num_kv_heads)[:, None]
        dst = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_ct + h[:, None] * stride_ch + d[None, :]
        k = tl.load(k_ptr + row * stride_kt + h[:, None] * stride_kh + d[None, :], mask=live)
        v = tl.load(v_ptr + row * stride_vt + h[:, None] * stride_vh + d[None, :], mask=live)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=live)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=live)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store k, v [T, H_kv, D] at flat slots ``slot_mapping`` [T] of caches [blocks, page, H_kv, D]."""
    rows, num_kv_heads, dim = k.shape
    if rows == 0:
        return
    _write_kv_kernel[(rows,)](
        k, v, k_cache, v_cache, slot_mapping, num_kv_heads, k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), *k_cache.stride()[:3], PAGE=k_cache.shape[1],
        BLOCK_H=next_power_of_2(num_kv_heads), D=dim, num_warps=4 if num_kv_heads * dim >= 1024 else 1)
