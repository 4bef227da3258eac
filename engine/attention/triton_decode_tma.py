"""Split-K paged decode attention with TMA page loads (Hopper): the experiment for the SDPA gap.

Same grid, splits and partials as ``triton_decode`` (merged by ``triton_merge``), but each
key tile is one cache page of one KV head, fetched by the tensor-memory accelerator as a 2-D
box ``[block_size, head_dim]`` of the cache viewed as ``[num_blocks * block_size,
num_kv_heads * head_dim]`` — one descriptor load per page instead of per-thread 16-byte
copies and per-row address math. Hopper's TMA cannot gather, so the tile is a page: 16 keys
at the engine's default block size, 64 at ``block_size=64``. Split boundaries fall on pages;
only a sequence's last page can be partial, and it is handled after the loop with its rows
past the end zeroed (a TMA box reads whatever the slot holds). On CPU and under the
interpreter the descriptor is a plain strided view, so the kernel is testable there too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.triton_paged import LN2, LOG2E, dot_precision, next_power_of_2, softmax_step


@triton.jit(do_not_specialize=("num_splits", "stride_table", "stride_ln", "stride_lh"))
def _decode_tma_kernel(q_ptr, k_desc, v_desc, tables_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
                       qk_scale, num_splits, stride_qt, stride_qh, stride_table, stride_pn, stride_ph,
                       stride_ps, stride_ln, stride_lh, stride_ls, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                       D: tl.constexpr, PAGE: tl.constexpr, PREC: tl.constexpr):
    kv_head, split, seq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), PAGE) * PAGE
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    full_end = tl.maximum(start, end - end % PAGE)  # pages before it are whole

    g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + g
    d = tl.arange(0, D)
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=(g < GROUP)[:, None], other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    table = tables_ptr + seq.to(tl.int64) * stride_table
    column = kv_head * D
    for n0 in range(start, full_end, PAGE):
        row = tl.load(table + n0 // PAGE) * PAGE
        k = k_desc.load([row, column])
        v = v_desc.load([row, column])
        m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, None, False, PREC)
    if full_end < end:  # the sequence's partial last page
        row = tl.load(table + full_end // PAGE) * PAGE
        kvalid = full_end + tl.arange(0, PAGE) < end
        k = tl.where(kvalid[:, None], k_desc.load([row, column]), 0.0)
        v = tl.where(kvalid[:, None], v_desc.load([row, column]), 0.0)
        m, l, acc = softmax_step(q, k, v, m, l, acc, qk_scale, kvalid[None, :], True, PREC)

    l_safe = tl.where(l > 0, l, 1.0)
    lse = tl.where(l > 0, (m + tl.log2(l_safe)) * LN2, float("-inf"))
    live = g < GROUP
    tl.store(part_out_ptr + seq * stride_pn + split * stride_ps + heads[:, None] * stride_ph + d[None, :],
             (acc / l_safe[:, None]).to(part_out_ptr.dtype.element_ty), mask=live[:, None])
    tl.store(part_lse_ptr + seq * stride_ln + heads * stride_lh + split * stride_ls, lse, mask=live)


def page_descriptor(cache: torch.Tensor):
    """A ``[block_size, head_dim]`` box descriptor over ``cache`` [blocks, block_size, H_kv, D]
    viewed 2-D (needs a contiguous cache)."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    blocks, page, kv_heads, dim = cache.shape
    if not cache.is_contiguous():
        raise ValueError("TMA decode needs a contiguous [blocks, block_size, H_kv, D] cache")
    return TensorDescriptor.from_tensor(cache.view(blocks * page, kv_heads * dim), [page, dim])


def decode_partials_tma(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                        part_out: torch.Tensor, part_lse: torch.Tensor, num_warps: int, num_stages: int) -> None:
    """``triton_decode.decode_partials`` with TMA page tiles (same inputs, outputs and split rule,
    except that slices are rounded to pages instead of key tiles)."""
    num_seqs, num_heads, dim = q.shape
    num_kv_heads, page = k_cache.shape[2], k_cache.shape[1]
    num_splits = part_out.shape[2]
    group = num_heads // num_kv_heads
    _decode_tma_kernel[(num_kv_heads, num_splits, num_seqs)](
        q, page_descriptor(k_cache), page_descriptor(v_cache), block_tables, seq_lens, part_out, part_lse,
        scale * LOG2E, num_splits, q.stride(0), q.stride(1), block_tables.stride(0), *part_out.stride()[:3],
        *part_lse.stride(), GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), D=dim, PAGE=page,
        PREC=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages)
