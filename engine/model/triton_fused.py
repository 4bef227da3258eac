"""Fused element-wise kernels for the decoder on CUDA: (residual add +) RMSNorm, rotary
embedding in place, SiLU-and-multiply.

A decode step of a small batch is bound by weight reads plus the launch cost of every
small kernel; unfused, the norms, rotary and activation are ~25 launches per layer, fused
they are 4. Each kernel keeps the rounding points of the torch code it replaces
(engine/model/layers.py, rotary.py): sums in the model dtype, norm statistics in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, eps, stride_x, stride_r, stride_o,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    live = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=live, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=live, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_r + cols, x, mask=live)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n + eps)
    normed = (xf * inv).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=live, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=live)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """norm(x) — or, with ``residual``, s = x + residual and (norm(s), s)."""
    rows, n = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else out
    res = residual if residual is not None else x
    _rms_norm_kernel[(rows,)](x, res, weight, out, res_out, n, eps, x.stride(0), res.stride(0), out.stride(0),
                              HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(n),
                              num_warps=8 if n >= 4096 else 4)
    return out, (res_out if residual is not None else None)


@triton.jit
def _rotate_heads(base, row, heads, stride_t, stride_h, cos, sin, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    live = (h < heads)[:, None]
    ptr = base + row * stride_t + h[:, None] * stride_h + d[None, :]
    x1 = tl.load(ptr, mask=live, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=live, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * cos[None, :] - x2 * sin[None, :]).to(base.dtype.element_ty), mask=live)
    tl.store(ptr + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(base.dtype.element_ty), mask=live)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, num_q_heads, num_k_heads,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_c,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    d = tl.arange(0, HALF)
    cos = tl.load(cos_ptr + pos * stride_c + d).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_c + d).to(tl.float32)
    _rotate_heads(q_ptr, row, num_q_heads, stride_qt, stride_qh, cos, sin, HALF, BLOCK_H)
    _rotate_heads(k_ptr, row, num_k_heads, stride_kt, stride_kh, cos, sin, HALF, BLOCK_H)


def rotary_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in place (rotate-half layout; views of one qkv buffer are fine)."""
    rows, hq, dim = q.shape
    if rows == 0:
        return
    block_h = triton.next_power_of_2(max(hq, k.shape[1]))
    _rotary_kernel[(rows,)](q, k, positions, cos, sin, hq, k.shape[1], q.stride(0), q.stride(1), k.stride(0),
                            k.stride(1), cos.stride(0), HALF=dim // 2, BLOCK_H=block_h, num_warps=4)


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < n
    g = tl.load(x_ptr + row * stride_x + cols, mask=live, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + n + cols, mask=live, other=0.0)
    act = (g / (1.0 + tl.exp(-g))).to(x_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + cols, (act.to(tl.float32) * u.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=live)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :n]) * x[:, n:] for x [T, 2n]."""
    rows, two_n = x.shape
    n = two_n // 2
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](x, out, n, x.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out
