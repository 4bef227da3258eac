"""The KV codec's Triton kernels (CUDA): compress blocks straight out of the paged cache, and
decompress straight into it, so no gather/scatter pass or full-size staging is needed.

Encode: one program (one warp) per (block, layer, kv head) by default handles that head's K and V
tiles [block_size, head_dim]; every reduction stays within the warp (no shared-memory round trips but
the stores' layout change). Decode: one program of 4 warps per (block, layer, kv head). The
arithmetic repeats kv_codec_ref.py step for step (fp32; the stats by IEEE division; codes as the
difference times the group's reciprocal rounded to nearest even, without fused multiply-adds;
directed fp16 rounding done on the bits; bf16 in and out through bit operations), so the bytes are
the same; tests/kvstore/test_kv_codec_interpret.py checks that under the interpreter,
tests/gpu/test_kv_codec_cuda.py on a GPU. A block is raw when one of its statistics is not finite
(the minimum keeps NaN, like torch's amin), as in the reference.
"""

from __future__ import annotations

import functools

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
def _unpack(packed, BS: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    shifts = tl.arange(0, PER) * BITS
    codes = (packed[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(codes, BS, DP).to(tl.float32)


@triton.jit
def _load_tile(ptr, t, h, stride_t, stride_h, BLOCK: tl.constexpr, BS: tl.constexpr, HP: tl.constexpr,
               HD: tl.constexpr, DP: tl.constexpr, IN_BF16: tl.constexpr, FULL: tl.constexpr):
    """A [BS, HP, DP] tile as fp32 (0 where masked). bf16 comes as int32 words of two channels (ptr and
    strides in words): each half moved into an fp32's high bits, one integer operation per element (and
    exact, where the interpreter's bf16 cast is not)."""
    if IN_BF16:
        d = tl.arange(0, DP // 2)[None, None, :]
        ptrs = ptr + t * stride_t + h * stride_h + d
        if FULL:
            w = tl.load(ptrs)
        else:
            w = tl.load(ptrs, mask=(t < BLOCK) & (d < HD // 2), other=0)
        lo, hi = (w << 16).to(tl.float32, bitcast=True), (w & -65536).to(tl.float32, bitcast=True)
        return tl.reshape(tl.join(lo, hi), BS, HP, DP)
    d = tl.arange(0, DP)[None, None, :]
    ptrs = ptr + t * stride_t + h * stride_h + d
    if FULL:
        return tl.load(ptrs).to(tl.float32)
    return tl.load(ptrs, mask=(t < BLOCK) & (d < HD), other=0).to(tl.float32)


@triton.jit
def _store(ptr, x, mask, FULL: tl.constexpr):
    if FULL:
        tl.store(ptr, x)
    else:
        tl.store(ptr, x, mask=mask)


@triton.jit
def _store_out(ptr, x, mask, IN_BF16: tl.constexpr):
    if IN_BF16:  # round to nearest even on the bits
        b = x.to(tl.int32, bitcast=True)
        tl.store(ptr, ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).to(tl.int16), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _min_nan(a, b):
    """min that keeps NaN (torch's amin does): a NaN makes the group's statistics NaN, so the block is raw."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _codes(x, minimum, scale):
    """round((x - minimum) * (1 / scale)) to nearest even, by adding 1.5 * 2^23: returned as that sum's
    bits, the code plus RINT_BITS (_words takes it off). The difference, the reciprocal (once per group)
    and the product are each rounded to fp32 as in the reference: the kernel is compiled without fused
    multiply-adds (enable_fp_fusion=False). No clamp: x >= minimum, and the product is at most
    LEVELS * (1 + 2^-22) where the group's statistics are finite (else the block is raw), so the code
    is 0..LEVELS, as the reference's clamp leaves it."""
    safe = tl.where(scale > 0, scale, 1.0)
    q = (x - minimum) * tl.div_rn(tl.full(safe.shape, 1.0, tl.float32), safe)
    return (q + 12582912.0).to(tl.int32, bitcast=True)


@triton.jit
def _any3(flags):
    """1 if any of a 3-d boolean tensor's elements is set, else 0 (int32 scalar)."""
    return tl.max(tl.max(tl.max(tl.where(flags, 1, 0), 2), 1), 0)


@triton.jit
def _words(codes, BS: tl.constexpr, HP: tl.constexpr, DP: tl.constexpr, VEC: tl.constexpr,
           BITS: tl.constexpr, BIAS: tl.constexpr):
    """int32 codes [BS, HP, DP] -> [BS, HP, DP / VEC] words of VEC codes, the first channel in the low
    bits; BIAS (mod 2^32) takes off what each code carried (see _codes)."""
    shifts = tl.arange(0, VEC) * BITS
    return tl.sum(tl.reshape(codes, BS, HP, DP // VEC, VEC) << shifts[None, None, None, :], axis=3) + BIAS


@triton.jit
def _encode_kernel(kv_ptr, ids_ptr, out16_ptr, outw_ptr, bad_ptr, payload_bytes,
                   stride_l, stride_kv, stride_b, stride_t, stride_h,
                   NL: tl.constexpr, NH: tl.constexpr,
                   BLOCK: tl.constexpr, BS: tl.constexpr, HD: tl.constexpr, DP: tl.constexpr, G: tl.constexpr,
                   BITS: tl.constexpr, IN_BF16: tl.constexpr, HEADER: tl.constexpr, REC: tl.constexpr,
                   HP: tl.constexpr, VEC: tl.constexpr, BIAS: tl.constexpr):
    """One program: HP heads (HP divides NH) of one block and layer, keys and values."""
    pid = tl.program_id(0)
    HEADS: tl.constexpr = NH // HP
    h0, l, i = (pid % HEADS) * HP, (pid // HEADS) % NL, pid // (HEADS * NL)
    LEVELS: tl.constexpr = (1 << BITS) - 1
    PER: tl.constexpr = 8 // BITS
    NG: tl.constexpr = HD // G
    NGP: tl.constexpr = DP // G
    CODES: tl.constexpr = BLOCK * HD // PER
    WORD: tl.constexpr = VEC // PER  # bytes a word
    FULL: tl.constexpr = BS == BLOCK and DP == HD  # no masks
    t = tl.arange(0, BS)[:, None, None]
    h = (h0 + tl.arange(0, HP))[None, :, None]
    d = tl.arange(0, DP)[None, None, :]
    live = (t < BLOCK) & (d < HD)
    src = kv_ptr + l.to(tl.int64) * stride_l + tl.load(ids_ptr + i).to(tl.int64) * stride_b
    rec = i.to(tl.int64) * payload_bytes + HEADER + (l * NH + h).to(tl.int64) * REC  # [1, HP, 1] bytes
    w = tl.arange(0, DP // VEC)[None, None, :]
    code_offs = rec // WORD + t * (HD // VEC) + w
    code_live = (t < BLOCK) & (w < HD // VEC)
    stats16 = (rec + 2 * CODES) // 2
    # keys: per channel, over the block's tokens
    k = _load_tile(src, t, h, stride_t, stride_h, BLOCK, BS, HP, HD, DP, IN_BF16, FULL)
    if FULL:
        k_lo, k_hi = tl.reduce(k, 0, _min_nan, keep_dims=True), tl.max(k, axis=0, keep_dims=True)
    else:
        k_lo = tl.reduce(tl.where(live, k, float("inf")), 0, _min_nan, keep_dims=True)
        k_hi = tl.max(tl.where(live, k, float("-inf")), axis=0, keep_dims=True)
    k_min = _fp16_down(k_lo)  # [1, HP, DP]
    k_scale = _fp16_up(tl.div_rn(k_hi - _as_f32(k_min), LEVELS))
    k_words = _words(_codes(k, _as_f32(k_min), _as_f32(k_scale)), BS, HP, DP, VEC, BITS, BIAS)
    _store(outw_ptr + code_offs, k_words.to(outw_ptr.dtype.element_ty), code_live, FULL)
    _store(out16_ptr + stats16 + d, k_min, d < HD, FULL)
    _store(out16_ptr + stats16 + HD + d, k_scale, d < HD, FULL)
    bad = _any3((d < HD) & (_nonfinite16(k_min) | _nonfinite16(k_scale)))
    # values: per token, over groups of G channels
    v = _load_tile(src + stride_kv, t, h, stride_t, stride_h, BLOCK, BS, HP, HD, DP, IN_BF16, FULL)
    v = tl.reshape(v, BS, HP, NGP, G)
    g = tl.arange(0, NGP)[None, None, :]
    g_live = (t < BLOCK) & (g < NG)
    if FULL:
        v_lo, v_hi = tl.reduce(v, 3, _min_nan), tl.max(v, axis=3)
    else:
        v_lo = tl.reduce(tl.where(g_live[:, :, :, None], v, float("inf")), 3, _min_nan)
        v_hi = tl.max(tl.where(g_live[:, :, :, None], v, float("-inf")), axis=3)
    v_min = _fp16_down(v_lo)  # [BS, HP, NGP]
    v_scale = _fp16_up(tl.div_rn(v_hi - _as_f32(v_min), LEVELS))
    v_codes = tl.reshape(_codes(v, _as_f32(v_min)[:, :, :, None], _as_f32(v_scale)[:, :, :, None]), BS, HP, DP)
    v_words = _words(v_codes, BS, HP, DP, VEC, BITS, BIAS)
    _store(outw_ptr + code_offs + CODES // WORD, v_words.to(outw_ptr.dtype.element_ty), code_live, FULL)
    g_offs = stats16 + 2 * HD + t * NG + g
    _store(out16_ptr + g_offs, v_min, g_live, FULL)
    _store(out16_ptr + g_offs + BLOCK * NG, v_scale, g_live, FULL)
    bad |= _any3(g_live & (_nonfinite16(v_min) | _nonfinite16(v_scale)))
    tl.store(bad_ptr + i, 1, mask=bad > 0)


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


RINT_BITS = 0x4B400000  # the bits of 1.5 * 2^23 (see _codes)
_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


@functools.lru_cache(maxsize=64)
def encode_consts(fmt: CodecFormat, dtype: torch.dtype, heads: int = 1, num_warps: int = 1) -> dict:
    """The encode kernel's compile-time arguments: ``heads`` per program (cut to the largest power of
    two dividing num_kv_heads), codes stored as words of VEC channels (what one 16-byte load holds).
    One head and one warp a program measured fastest on an H200 (BENCHMARKS.md)."""
    lay = fmt.layout
    vec = 16 // dtype.itemsize
    bias = -RINT_BITS * sum(1 << (fmt.bits * j) for j in range(vec)) % (1 << 32)  # see _codes, as int32
    return dict(NL=lay.num_layers, NH=lay.num_kv_heads, BLOCK=lay.block_size, BS=triton.next_power_of_2(lay.block_size),
                HD=lay.head_dim, DP=triton.next_power_of_2(lay.head_dim), G=fmt.group, BITS=fmt.bits,
                IN_BF16=dtype == torch.bfloat16, HEADER=HEADER_BYTES, REC=fmt.record_bytes,
                HP=min(heads, lay.num_kv_heads & -lay.num_kv_heads), VEC=vec, BIAS=bias - (bias >> 31 << 32),
                num_warps=num_warps, enable_fp_fusion=False)


def encode_blocks(kv: torch.Tensor, ids: torch.Tensor, fmt: CodecFormat,
                  **tuning) -> tuple[torch.Tensor, torch.Tensor]:
    """(payloads [n, payload_bytes] uint8 with the header left unwritten, raw [n] bool), both on kv's device."""
    n, lay = ids.numel(), fmt.layout
    out = torch.empty(n, fmt.payload_bytes, dtype=torch.uint8, device=kv.device)
    bad = torch.zeros(n, dtype=torch.int8, device=kv.device)
    if n:
        x = kv.view(torch.int32) if kv.dtype == torch.bfloat16 else kv  # bf16: pairs (see _load_tile)
        consts = encode_consts(fmt, kv.dtype, **tuning)
        word = _WORD_DTYPES[consts["VEC"] * fmt.bits // 8]
        grid = (n * lay.num_layers * (lay.num_kv_heads // consts["HP"]),)
        _encode_kernel[grid](x, ids, out.view(torch.int16), out.view(word), bad, fmt.payload_bytes,
                             x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4), **consts)
    return out, bad.view(torch.bool)


def decode_blocks(kv: torch.Tensor, ids: torch.Tensor, payloads: torch.Tensor, fmt: CodecFormat) -> None:
    """Decode ``payloads`` (on kv's device) into blocks ``ids`` of ``kv``."""
    if ids.numel():
        args, consts = _launch_args(kv, fmt)
        grid = (ids.numel() * fmt.layout.num_layers * fmt.layout.num_kv_heads,)
        _decode_kernel[grid](_elements(kv), ids, payloads, payloads.view(torch.int16), *args, **consts)
