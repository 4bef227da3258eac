"""The KV codec's Triton kernels (CUDA): compress blocks straight out of the paged cache, and
decompress straight into it, so no gather/scatter pass or full-size staging is needed.

One program per (block, layer, kv head) handles that head's K and V tiles [block_size, head_dim].
The arithmetic repeats kv_codec_ref.py step for step (fp32, IEEE division, floor(y + 0.5),
directed fp16 rounding done on the bits, bf16 in and out through bit operations), so the
bytes are the same; tests/kvstore/test_kv_codec_interpret.py checks that under the
interpreter, tests/gpu/test_kv_codec_cuda.py on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvstore.codec_format import HEADER_BYTES, CodecFormat


@triton.jit
def _fp16_down(x):
    """fp32 -> fp16 bits (int16), rounded toward -inf."""
    bits = x.to(tl.float16).to(tl.int16, bitcast=True)
    over = bits.to(tl.float16, bitcast=True).to(tl.float32) > x
    lower = tl.where(bits > 0, bits - 1, tl.where(bits == 0, -32767, bits + 1).to(tl.int16)).to(tl.int16)
    return tl.where(over, lower, bits)


@triton.jit
def _fp16_up(x):
    """fp32 >= 0 -> fp16 bits (int16), rounded toward +inf."""
    bits = x.to(tl.float16).to(tl.int16, bitcast=True)
    under = bits.to(tl.float16, bitcast=True).to(tl.float32) < x
    return tl.where(under, bits + 1, bits).to(tl.int16)


@triton.jit
def _as_f32(bits16):
    return bits16.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _nonfinite16(bits16):
    return (bits16 & 0x7C00) == 0x7C00


@triton.jit
def _quantize(x, minimum, scale, LEVELS: tl.constexpr):
    safe = tl.where(scale > 0, scale, 1.0)
    codes = tl.floor(tl.div_rn(x - minimum, safe) + 0.5)
    return tl.minimum(tl.maximum(codes, 0.0), LEVELS).to(tl.int32)


@triton.jit
def _pack(codes, BS: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr):
    """int32 [BS, DP] -> [BS, DP * BITS / 8] bytes (int32), the first channel in the low bits."""
    PER: tl.constexpr = 8 // BITS
    shifts = tl.arange(0, PER) * BITS
    return tl.sum(tl.reshape(codes, BS, DP // PER, PER) << shifts[None, None, :], axis=2)


@triton.jit
def _unpack(packed, BS: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    shifts = tl.arange(0, PER) * BITS
    codes = (packed[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(codes, BS, DP).to(tl.float32)


@triton.jit
def _load_f32(ptr, mask, IN_BF16: tl.constexpr):
    if IN_BF16:  # bf16 bits shifted into an fp32 (the interpreter's bf16 cast is not exact)
        return (tl.load(ptr, mask=mask, other=0).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return tl.load(ptr, mask=mask, other=0).to(tl.float32)


@triton.jit
def _store_out(ptr, x, mask, IN_BF16: tl.constexpr):
    if IN_BF16:  # round to nearest even on the bits
        b = x.to(tl.int32, bitcast=True)
        tl.store(ptr, ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).to(tl.int16), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _encode_kernel(kv_ptr, ids_ptr, out_ptr, out16_ptr, bad_ptr, num_layers, num_heads, payload_bytes,
                   stride_l, stride_kv, stride_b, stride_t, stride_h,
                   BLOCK: tl.constexpr, BS: tl.constexpr, HD: tl.constexpr, DP: tl.constexpr, G: tl.constexpr,
                   BITS: tl.constexpr, IN_BF16: tl.constexpr, HEADER: tl.constexpr, REC: tl.constexpr):
    pid = tl.program_id(0)
    h, l, i = pid % num_heads, (pid // num_heads) % num_layers, pid // (num_heads * num_layers)
    LEVELS: tl.constexpr = (1 << BITS) - 1
    PER: tl.constexpr = 8 // BITS
    NG: tl.constexpr = HD // G
    CODES: tl.constexpr = BLOCK * HD // PER
    t, d = tl.arange(0, BS), tl.arange(0, DP)
    live = (t < BLOCK)[:, None] & (d < HD)[None, :]
    src = kv_ptr + l.to(tl.int64) * stride_l + tl.load(ids_ptr + i).to(tl.int64) * stride_b + h * stride_h
    offs = t[:, None] * stride_t + d[None, :]
    rec = i.to(tl.int64) * payload_bytes + HEADER + (l * num_heads + h).to(tl.int64) * REC
    j = tl.arange(0, DP // PER)
    code_offs = t[:, None] * (HD // PER) + j[None, :]
    code_live = (t < BLOCK)[:, None] & (j < HD // PER)[None, :]
    # keys: per channel, over the block's tokens
    k = _load_f32(src + offs, live, IN_BF16)
    k_min = _fp16_down(tl.min(tl.where(live, k, float("inf")), axis=0))
    k_scale = _fp16_up(tl.div_rn(tl.max(tl.where(live, k, float("-inf")), axis=0) - _as_f32(k_min), LEVELS))
    k_codes = _quantize(k, _as_f32(k_min)[None, :], _as_f32(k_scale)[None, :], LEVELS)
    tl.store(out_ptr + rec + code_offs, _pack(k_codes, BS, DP, BITS).to(tl.uint8), mask=code_live)
    stats16 = (rec + 2 * CODES) // 2
    tl.store(out16_ptr + stats16 + d, k_min, mask=d < HD)
    tl.store(out16_ptr + stats16 + HD + d, k_scale, mask=d < HD)
    bad = tl.sum(tl.where(live & ((k.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000), 1, 0))
    bad += tl.sum(tl.where((d < HD) & (_nonfinite16(k_min) | _nonfinite16(k_scale)), 1, 0))
    # values: per token, over groups of G channels
    v = tl.reshape(_load_f32(src + stride_kv + offs, live, IN_BF16), BS, DP // G, G)
    g_live = (t < BLOCK)[:, None] & (tl.arange(0, DP // G) < NG)[None, :]
    v_min = _fp16_down(tl.min(tl.where(g_live[:, :, None], v, float("inf")), axis=2))
    v_max = tl.max(tl.where(g_live[:, :, None], v, float("-inf")), axis=2)
    v_scale = _fp16_up(tl.div_rn(v_max - _as_f32(v_min), LEVELS))
    v_codes = tl.reshape(_quantize(v, _as_f32(v_min)[:, :, None], _as_f32(v_scale)[:, :, None], LEVELS), BS, DP)
    tl.store(out_ptr + rec + CODES + code_offs, _pack(v_codes, BS, DP, BITS).to(tl.uint8), mask=code_live)
    g_offs = stats16 + 2 * HD + t[:, None] * NG + tl.arange(0, DP // G)[None, :]
    tl.store(out16_ptr + g_offs, v_min, mask=g_live)
    tl.store(out16_ptr + g_offs + BLOCK * NG, v_scale, mask=g_live)
    v_bits = tl.reshape(v, BS, DP).to(tl.int32, bitcast=True)
    bad += tl.sum(tl.where(live & ((v_bits & 0x7F800000) == 0x7F800000), 1, 0))
    bad += tl.sum(tl.where(g_live & (_nonfinite16(v_min) | _nonfinite16(v_scale)), 1, 0))
    tl.store(bad_ptr + pid, (bad > 0).to(tl.int8))


@triton.jit
def _decode_kernel(kv_ptr, ids_ptr, in_ptr, in16_ptr, num_layers, num_heads, payload_bytes,
                   stride_l, stride_kv, stride_b, stride_t, stride_h,
                   BLOCK: tl.constexpr, BS: tl.constexpr, HD: tl.constexpr, DP: tl.constexpr, G: tl.constexpr,
                   BITS: tl.constexpr, IN_BF16: tl.constexpr, HEADER: tl.constexpr, REC: tl.constexpr):
    pid = tl.program_id(0)
    h, l, i = pid % num_heads, (pid // num_heads) % num_layers, pid // (num_heads * num_layers)
    PER: tl.constexpr = 8 // BITS
    NG: tl.constexpr = HD // G
    CODES: tl.constexpr = BLOCK * HD // PER
    t, d = tl.arange(0, BS), tl.arange(0, DP)
    live = (t < BLOCK)[:, None] & (d < HD)[None, :]
    dst = kv_ptr + l.to(tl.int64) * stride_l + tl.load(ids_ptr + i).to(tl.int64) * stride_b + h * stride_h
    offs = t[:, None] * stride_t + d[None, :]
    rec = i.to(tl.int64) * payload_bytes + HEADER + (l * num_heads + h).to(tl.int64) * REC
    j = tl.arange(0, DP // PER)
    code_offs = t[:, None] * (HD // PER) + j[None, :]
    code_live = (t < BLOCK)[:, None] & (j < HD // PER)[None, :]
    stats16 = (rec + 2 * CODES) // 2
    k_min = _as_f32(tl.load(in16_ptr + stats16 + d, mask=d < HD, other=0))
    k_scale = _as_f32(tl.load(in16_ptr + stats16 + HD + d, mask=d < HD, other=0))
    k_codes = _unpack(tl.load(in_ptr + rec + code_offs, mask=code_live, other=0).to(tl.int32), BS, DP, BITS)
    _store_out(dst + offs, k_min[None, :] + k_codes * k_scale[None, :], live, IN_BF16)
    g = tl.arange(0, DP // G)
    g_live = (t < BLOCK)[:, None] & (g < NG)[None, :]
    g_offs = stats16 + 2 * HD + t[:, None] * NG + g[None, :]
    v_min = _as_f32(tl.load(in16_ptr + g_offs, mask=g_live, other=0))
    v_scale = _as_f32(tl.load(in16_ptr + g_offs + BLOCK * NG, mask=g_live, other=0))
    v_codes = _unpack(tl.load(in_ptr + rec + CODES + code_offs, mask=code_live, other=0).to(tl.int32), BS, DP, BITS)
    v = v_min[:, :, None] + tl.reshape(v_codes, BS, DP // G, G) * v_scale[:, :, None]
    _store_out(dst + stride_kv + offs, tl.reshape(v, BS, DP), live, IN_BF16)


def _launch_args(kv: torch.Tensor, fmt: CodecFormat) -> tuple[tuple, dict]:
    lay = fmt.layout
    strides = (kv.stride(0), kv.stride(1), kv.stride(2), kv.stride(3), kv.stride(4))
    consts = dict(BLOCK=lay.block_size, BS=triton.next_power_of_2(lay.block_size), HD=lay.head_dim,
                  DP=triton.next_power_of_2(lay.head_dim), G=fmt.group, BITS=fmt.bits,
                  IN_BF16=kv.dtype == torch.bfloat16, HEADER=HEADER_BYTES, REC=fmt.record_bytes,
                  num_warps=4 if lay.block_size * lay.head_dim >= 1024 else 1)
    return (lay.num_layers, lay.num_kv_heads, fmt.payload_bytes, *strides), consts


def _elements(kv: torch.Tensor) -> torch.Tensor:
    return kv.view(torch.int16) if kv.dtype == torch.bfloat16 else kv


def encode_blocks(kv: torch.Tensor, ids: torch.Tensor, fmt: CodecFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(payloads [n, payload_bytes] uint8 with the header left unwritten, raw [n] bool), both on kv's device."""
    n, lay = ids.numel(), fmt.layout
    out = torch.empty(n, fmt.payload_bytes, dtype=torch.uint8, device=kv.device)
    bad = torch.empty(n, lay.num_layers * lay.num_kv_heads, dtype=torch.int8, device=kv.device)
    if n:
        args, consts = _launch_args(kv, fmt)
        _encode_kernel[(bad.numel(),)](_elements(kv), ids, out, out.view(torch.int16), bad, *args, **consts)
    return out, bad.bool().any(1)


def decode_blocks(kv: torch.Tensor, ids: torch.Tensor, payloads: torch.Tensor, fmt: CodecFormat) -> None:
    """Decode ``payloads`` (on kv's device) into blocks ``ids`` of ``kv``."""
    if ids.numel():
        args, consts = _launch_args(kv, fmt)
        grid = (ids.numel() * fmt.layout.num_layers * fmt.layout.num_kv_heads,)
        _decode_kernel[grid](_elements(kv), ids, payloads, payloads.view(torch.int16), *args, **consts)
