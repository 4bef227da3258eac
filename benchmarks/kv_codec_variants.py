"""Scratch: the KV codec's encode kernel, variants timed on one GPU (issue 18 part 3).

  PYTHONPATH=. python -m benchmarks.kv_codec_variants [--tokens 4096] [--ref-blocks 64]

A 4K-token request at Llama-3-8B KV shapes (32 layers, 8 KV heads, dim 128, bf16, random block ids,
benchmarks/kv_codec.py's cache). Rows: the kernel before this change (``old``, copied below: one
program of 4 warps per (block, layer, head), an IEEE division per element, codes floor(y + 0.5)) and
kv_codec_triton's kernel (``new``) with heads per program (hp) and warps (nw). Kernel alone: triton's
do_bench median (L2 flushed); whole call: kv_codec.encode (header, raw flags to the CPU), wall
median; GB/s: bytes read and written by the kernel alone. Bytes: ``old`` rows against the old kernel
(all blocks), ``new`` rows against the CPU reference (the first --ref-blocks blocks) and each other.
A first run (BENCHMARKS.md) also timed the new kernel with the old division and with floor(y + 0.5).
"""

from __future__ import annotations

import argparse
import functools

import torch
import triton
import triton.language as tl

from benchmarks.common import median_seconds, wall_median
from benchmarks.kv_codec import LLAMA3_8B, _cache
from kvstore import kv_codec, kv_codec_ref
from kvstore import kv_codec_triton as kt
from kvstore.codec_format import HEADER_BYTES, CodecFormat
from kvstore.kv_codec_triton import _as_f32, _fp16_down, _fp16_up, _nonfinite16

# --- the kernel before (commit 26e509e's kvstore/kv_codec_triton.py) ---


@triton.jit
def _old_quantize(x, minimum, scale, LEVELS: tl.constexpr):
    safe = tl.where(scale > 0, scale, 1.0)
    codes = tl.floor(tl.div_rn(x - minimum, safe) + 0.5)
    return tl.minimum(tl.maximum(codes, 0.0), LEVELS).to(tl.int32)


@triton.jit
def _old_pack(codes, BS: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr):
    """int32 [BS, DP] -> [BS, DP * BITS / 8] bytes (int32), the first channel in the low bits."""
    PER: tl.constexpr = 8 // BITS
    shifts = tl.arange(0, PER) * BITS
    return tl.sum(tl.reshape(codes, BS, DP // PER, PER) << shifts[None, None, :], axis=2)


@triton.jit
def _old_load_f32(ptr, mask, IN_BF16: tl.constexpr):
    if IN_BF16:  # bf16 bits shifted into an fp32 (the interpreter's bf16 cast is not exact)
        return (tl.load(ptr, mask=mask, other=0).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return tl.load(ptr, mask=mask, other=0).to(tl.float32)


@triton.jit
def _old_encode_kernel(kv_ptr, ids_ptr, out_ptr, out16_ptr, bad_ptr, num_layers, num_heads, payload_bytes,
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
    k = _old_load_f32(src + offs, live, IN_BF16)
    k_min = _fp16_down(tl.min(tl.where(live, k, float("inf")), axis=0))
    k_scale = _fp16_up(tl.div_rn(tl.max(tl.where(live, k, float("-inf")), axis=0) - _as_f32(k_min), LEVELS))
    k_codes = _old_quantize(k, _as_f32(k_min)[None, :], _as_f32(k_scale)[None, :], LEVELS)
    tl.store(out_ptr + rec + code_offs, _old_pack(k_codes, BS, DP, BITS).to(tl.uint8), mask=code_live)
    stats16 = (rec + 2 * CODES) // 2
    tl.store(out16_ptr + stats16 + d, k_min, mask=d < HD)
    tl.store(out16_ptr + stats16 + HD + d, k_scale, mask=d < HD)
    bad = tl.sum(tl.where(live & ((k.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000), 1, 0))
    bad += tl.sum(tl.where((d < HD) & (_nonfinite16(k_min) | _nonfinite16(k_scale)), 1, 0))
    # values: per token, over groups of G channels
    v = tl.reshape(_old_load_f32(src + stride_kv + offs, live, IN_BF16), BS, DP // G, G)
    g_live = (t < BLOCK)[:, None] & (tl.arange(0, DP // G) < NG)[None, :]
    v_min = _fp16_down(tl.min(tl.where(g_live[:, :, None], v, float("inf")), axis=2))
    v_max = tl.max(tl.where(g_live[:, :, None], v, float("-inf")), axis=2)
    v_scale = _fp16_up(tl.div_rn(v_max - _as_f32(v_min), LEVELS))
    v_codes = tl.reshape(_old_quantize(v, _as_f32(v_min)[:, :, None], _as_f32(v_scale)[:, :, None], LEVELS), BS, DP)
    tl.store(out_ptr + rec + CODES + code_offs, _old_pack(v_codes, BS, DP, BITS).to(tl.uint8), mask=code_live)
    g_offs = stats16 + 2 * HD + t[:, None] * NG + tl.arange(0, DP // G)[None, :]
    tl.store(out16_ptr + g_offs, v_min, mask=g_live)
    tl.store(out16_ptr + g_offs + BLOCK * NG, v_scale, mask=g_live)
    v_bits = tl.reshape(v, BS, DP).to(tl.int32, bitcast=True)
    bad += tl.sum(tl.where(live & ((v_bits & 0x7F800000) == 0x7F800000), 1, 0))
    bad += tl.sum(tl.where(g_live & (_nonfinite16(v_min) | _nonfinite16(v_scale)), 1, 0))
    tl.store(bad_ptr + pid, (bad > 0).to(tl.int8))


def old_encode_blocks(kv: torch.Tensor, ids: torch.Tensor, fmt: CodecFormat, num_warps: int = 4):
    n, lay = ids.numel(), fmt.layout
    out = torch.empty(n, fmt.payload_bytes, dtype=torch.uint8, device=kv.device)
    bad = torch.empty(n, lay.num_layers * lay.num_kv_heads, dtype=torch.int8, device=kv.device)
    args, consts = kt._launch_args(kv, fmt)
    consts["num_warps"] = num_warps
    _old_encode_kernel[(bad.numel(),)](kt._elements(kv), ids, out, out.view(torch.int16), bad, *args, **consts)
    return out, bad.bool().any(1)


# --- timing ---


def _variants(codec: str) -> list[tuple[str, dict]]:
    rows: list[tuple[str, dict]] = [("old nw4", dict(num_warps=4)), ("old nw1", dict(num_warps=1))]
    shapes = ((1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4), (4, 4), (8, 8))
    if codec != "kivi4":
        rows, shapes = rows[:1], ((1, 1), (1, 2), (2, 1))
    return rows + [(f"new hp{h} nw{w}", dict(heads=h, num_warps=w)) for h, w in shapes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--ref-blocks", type=int, default=64)
    p.add_argument("--codecs", nargs="+", default=["kivi4", "kivi2"])
    p.add_argument("--only", nargs="*", help="variants whose name contains one of these")
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: a smoke run, TRITON_INTERPRET=1
    kv, ids = _cache(args.tokens // LLAMA3_8B.block_size + 64, args.tokens, dev, seed=1)
    raw_mb = kv[:, :, ids].numel() * kv.element_size() / 1e6
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"{name} torch {torch.__version__} triton {triton.__version__}; "
          f"{ids.numel()} blocks, {raw_mb:.0f} MB read", flush=True)
    for codec in args.codecs:
        fmt = CodecFormat.of(LLAMA3_8B, codec)
        old, old_raw = old_encode_blocks(kv, ids, fmt)
        nref = min(args.ref_blocks, ids.numel())
        cpu_kv, cpu_ids = kv.cpu(), ids[:nref].cpu()
        ref, ref_raw = kv_codec_ref.encode_blocks(cpu_kv.index_select(2, cpu_ids).permute(2, 0, 1, 3, 4, 5), fmt)
        assert not ref_raw.any()
        ref, old_head = ref[:, HEADER_BYTES:], old[:nref, HEADER_BYTES:].cpu()
        print(f"\n{codec}: payload {fmt.payload_bytes} B/block; bytes differing between the old kernel and the "
              f"reference now, first {nref} blocks: {(old_head != ref).sum().item()} of {ref.numel()}", flush=True)
        print(f"{'variant':18s} {'kernel ms':>9s} {'GB/s':>6s} {'call ms':>8s}  bytes", flush=True)
        first = None
        for name, tuning in _variants(codec):
            if args.only and not any(o in name for o in args.only):
                continue
            if name.startswith("old"):
                enc = functools.partial(old_encode_blocks, num_warps=tuning["num_warps"])
            else:
                enc = functools.partial(kt.encode_blocks, **tuning)
            try:
                got, got_raw = enc(kv, ids, fmt)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 (a variant that fails to compile is a row)
                print(f"{name:18s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            if name.startswith("old"):
                same = torch.equal(got[:, HEADER_BYTES:], old[:, HEADER_BYTES:]) and torch.equal(got_raw, old_raw)
                check = f"{'same' if same else 'DIFFERENT'} as old"
            else:
                same = torch.equal(got[:nref, HEADER_BYTES:].cpu(), ref) and not got_raw.any().item()
                check = f"{'same' if same else 'DIFFERENT'} as CPU ref ({nref} blocks)"
                if first is None:
                    first = got
                elif not torch.equal(got[:, HEADER_BYTES:], first[:, HEADER_BYTES:]):
                    check += ", DIFFERENT from the first new row"
            if dev.type != "cuda":
                print(f"{name:18s} {check}", flush=True)
                continue
            ms = 1e3 * median_seconds(lambda: enc(kv, ids, fmt), dev, rep_ms=200)
            saved = kt.encode_blocks
            kt.encode_blocks = enc if not name.startswith("old") else saved
            try:
                if name.startswith("old"):
                    def call():
                        out, raw = old_encode_blocks(kv, ids, fmt, num_warps=tuning["num_warps"])
                        out[:, :HEADER_BYTES] = torch.frombuffer(bytearray(fmt.header()), dtype=torch.uint8).to(dev)
                        return out, raw.cpu()
                else:
                    def call():
                        return kv_codec.encode(kv, ids, fmt)
                reps, warm = (50, 5) if dev.type == "cuda" else (1, 0)
                call_ms = 1e3 * wall_median(call, dev, reps, warmup=warm)
            finally:
                kt.encode_blocks = saved
            gbs = raw_mb * (1 + fmt.payload_bytes / LLAMA3_8B.bytes_per_block) / ms  # read + written, MB/ms
            print(f"{name:18s} {ms:9.3f} {gbs:6.0f} {call_ms:8.3f}  {check}", flush=True)
            if name == "new hp1 nw1":  # where the whole call's time goes
                alone = 1e3 * wall_median(lambda: enc(kv, ids, fmt), dev, reps, warmup=warm)
                flags = 1e3 * wall_median(lambda: enc(kv, ids, fmt)[1].cpu(), dev, reps, warmup=warm)
                print(f"{'':18s} encode_blocks alone {alone:.3f} ms wall, with raw.cpu() {flags:.3f}", flush=True)
        if dev.type != "cuda":
            continue
        dec = 1e3 * median_seconds(lambda: kt.decode_blocks(kv, ids, old, fmt), dev, rep_ms=200)
        print(f"decode kernel (unchanged) {dec:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
