"""The KIVI-style KV codec on the CPU (torch path): error bounds, the header, raw fallbacks, sizes."""

from __future__ import annotations

import pytest
import torch

from kvstore.codec_format import HEADER_BYTES, CodecFormat, value_group
from kvstore.errors import LayoutMismatchError
from kvstore.kv_codec import decode, encode
from kvstore.kv_codec_ref import quantize, split_records
from kvstore.layout import KVLayout

LAYOUT = KVLayout(num_layers=2, block_size=16, num_kv_heads=2, head_dim=32, dtype="float32")
LLAMA3_8B = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")


def cache(layout: KVLayout, num_blocks: int, seed: int) -> torch.Tensor:
    """Keys with per-channel offsets (KIVI's outlier channels), values around zero."""
    g = torch.Generator().manual_seed(seed)
    shape = (layout.num_layers, 2, num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    kv = torch.randn(shape, generator=g)
    kv[:, 0] = kv[:, 0] * 2 + 8 * torch.randn(layout.head_dim, generator=g)
    return kv.to(layout.torch_dtype)


def round_trip(kv: torch.Tensor, ids: list[int], fmt: CodecFormat) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.tensor(ids)
    payloads, raw = encode(kv, index, fmt)
    assert not raw.any()
    out = torch.zeros_like(kv)
    decode(out, index, payloads, fmt)
    return payloads, out


def error_bounds(kv: torch.Tensor, out: torch.Tensor, ids: list[int], payloads: torch.Tensor,
                 fmt: CodecFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K error, K bound, V error, V bound), each [n, L, H, block, D]; bound = scale / 2 per group
    plus the rounding of fp32 arithmetic and of the cache dtype."""
    _, _, k_min, k_scale, v_min, v_scale = split_records(payloads, fmt)
    x = kv[:, :, ids].float().permute(2, 0, 1, 4, 3, 5)  # [n, L, 2, H, block, D]
    y = out[:, :, ids].float().permute(2, 0, 1, 4, 3, 5)
    out_ulp = (2.0 ** -8 if fmt.layout.dtype == "bfloat16" else 2.0 ** -22) * torch.maximum(x.abs(), y.abs())
    k_bound = k_scale[:, :, :, None] / 2 + out_ulp[:, :, 0] + 1e-6 * k_min.abs()[:, :, :, None]
    v_scale = v_scale.repeat_interleave(fmt.group, -1)
    v_bound = v_scale / 2 + out_ulp[:, :, 1] + 1e-6 * v_min.abs().repeat_interleave(fmt.group, -1)
    return (x[:, :, 0] - y[:, :, 0]).abs(), k_bound, (x[:, :, 1] - y[:, :, 1]).abs(), v_bound


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("codec", ["kivi4", "kivi2"])
def test_round_trip_error_is_within_half_a_scale_per_group(codec, dtype):
    layout = KVLayout(2, 16, 2, 32, dtype)
    fmt = CodecFormat.of(layout, codec)
    kv, ids = cache(layout, 6, seed=1), [4, 0, 5]
    payloads, out = round_trip(kv, ids, fmt)
    k_err, k_bound, v_err, v_bound = error_bounds(kv, out, ids, payloads, fmt)
    assert (k_err <= k_bound).all() and (v_err <= v_bound).all()
    assert k_err.max() > 0 and v_err.max() > 0, "lossy: something must differ"
    untouched = [i for i in range(6) if i not in ids]
    assert (out[:, :, untouched] == 0).all()


@pytest.mark.parametrize("codec", ["kivi4", "kivi2"])
def test_stats_are_the_groups_own_min_and_range(codec):
    """The bound above is only as good as the scale: it must be (max - min) / levels, rounded up
    to fp16, per channel over the block for keys and per token over a channel group for values."""
    fmt = CodecFormat.of(LAYOUT, codec)
    kv, ids = cache(LAYOUT, 3, seed=2), [2, 0]
    payloads, _ = round_trip(kv, ids, fmt)
    _, _, k_min, k_scale, v_min, v_scale = split_records(payloads, fmt)
    x = kv[:, :, ids].float().permute(2, 0, 1, 4, 3, 5)  # [n, L, 2, H, block, D]
    k_lo, k_hi = x[:, :, 0].amin(3), x[:, :, 0].amax(3)
    groups = x[:, :, 1].reshape(*x.shape[:2], *x.shape[3:5], fmt.groups, fmt.group)
    v_lo, v_hi = groups.amin(-1), groups.amax(-1)
    for lo, hi, minimum, scale in ((k_lo, k_hi, k_min, k_scale), (v_lo, v_hi, v_min, v_scale)):
        assert (minimum <= lo).all() and (minimum >= lo - lo.abs() * 2.0 ** -10 - 2.0 ** -24).all()
        needed = (hi - minimum) / fmt.levels
        assert (scale >= needed).all() and (scale <= needed * (1 + 2.0 ** -10) + 2.0 ** -24).all()


def test_codes_are_the_product_with_the_reciprocal_rounded_to_nearest_even():
    """round((x - min) * (1 / scale)): ties go to the even code (the Triton kernel adds 1.5 * 2^23),
    and the quotient is a product with the group's rounded reciprocal, not an IEEE division."""
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, 14.5, 0.49999997])
    assert quantize(x, torch.zeros(1), torch.ones(1), 15).tolist() == [0, 2, 2, 4, 14, 0]
    scale = torch.tensor([0.1], dtype=torch.float16)  # 1 / scale is not exact
    mid = ((torch.arange(15) + 0.5) * scale.float()).view(torch.int32)  # within a few ulps of the ties
    x = (mid[:, None] + torch.arange(-4, 5, dtype=torch.int32)).view(torch.float32).flatten()
    y = x * (1 / scale.float())
    want = torch.round(y).clamp(0, 15)
    assert torch.equal(quantize(x, torch.zeros(1), scale, 15), want.to(torch.uint8))
    assert not torch.equal(want, torch.round(x / scale.float()).clamp(0, 15)), "the test must tell them apart"


def test_two_bits_lose_more_than_four():
    kv, ids = cache(LAYOUT, 4, seed=3), [0, 1, 2, 3]
    errors = {}
    for codec in ("kivi4", "kivi2"):
        _, out = round_trip(kv, ids, CodecFormat.of(LAYOUT, codec))
        errors[codec] = (out - kv).abs().mean().item()
    assert 3 * errors["kivi4"] < errors["kivi2"] < 0.5


def test_a_partial_last_block_is_raw_and_the_others_are_not():
    fmt = CodecFormat.of(LAYOUT, "kivi4")
    kv = cache(LAYOUT, 4, seed=4)
    _, raw = encode(kv, torch.tensor([3, 1, 2]), fmt, num_tokens=2 * 16 + 5)
    assert raw.tolist() == [False, False, True]
    _, raw = encode(kv, torch.tensor([3, 1, 2]), fmt, num_tokens=3 * 16)
    assert raw.tolist() == [False, False, False]
    with pytest.raises(ValueError, match="do not fill 3 blocks"):
        encode(kv, torch.tensor([3, 1, 2]), fmt, num_tokens=2 * 16)


def test_blocks_the_codec_cannot_hold_are_raw():
    """inf / NaN anywhere, or a range beyond fp16's, makes the block raw; the rest still compress."""
    layout = KVLayout(2, 16, 2, 32, "bfloat16")
    kv = cache(layout, 5, seed=5)
    kv[1, 0, 1, 3, 1, 7] = float("inf")
    kv[0, 1, 2, 5, 0, 0] = float("nan")
    kv[1, 1, 3, 0, 0, 4], kv[1, 1, 3, 0, 0, 5] = 7e4, -7e4  # one value group spanning 1.4e5
    kv[0, 0, 4, :, 1, 2] = 6e4  # large but representable: compressed
    _, raw = encode(kv, torch.arange(5), CodecFormat.of(layout, "kivi4"))
    assert raw.tolist() == [False, True, True, True, False]


def test_header_describes_the_payload_and_refuses_another_layout():
    fmt = CodecFormat.of(LAYOUT, "kivi2")
    payloads, _ = encode(cache(LAYOUT, 2, seed=6), torch.tensor([1]), fmt)
    data = payloads[0].numpy().tobytes()
    assert len(data) == fmt.payload_bytes != LAYOUT.bytes_per_block
    assert CodecFormat.parse(data, LAYOUT, "b") == fmt
    other = KVLayout(2, 16, 2, 32, "bfloat16")
    with pytest.raises(LayoutMismatchError, match="compressed for layout L2.B16.H2.D32.float32, cache is "
                                                  "L2.B16.H2.D32.bfloat16"):
        CodecFormat.parse(data, other, "b")
    with pytest.raises(LayoutMismatchError, match="not a payload this version can decode"):
        CodecFormat.parse(b"XXXX" + data[4:], LAYOUT, "b")
    with pytest.raises(LayoutMismatchError, match="do not make a 2-bit"):
        CodecFormat.parse(data[:-2], LAYOUT, "b")
    assert data[HEADER_BYTES:] != bytes(len(data) - HEADER_BYTES)


def test_llama3_8b_block_is_over_3x_smaller_at_4_bits_and_5x_at_2():
    """Per (layer, head): 16x128 codes for K and V, fp16 min+scale per key channel (4 B x 128) and
    per value token (4 B x 16): 2 x 1024 + 512 + 64 bytes at 4 bits against 8 KiB raw."""
    four, two = CodecFormat.of(LLAMA3_8B, "kivi4"), CodecFormat.of(LLAMA3_8B, "kivi2")
    assert (four.group, four.record_bytes, two.record_bytes) == (128, 2624, 1600)
    assert four.payload_bytes == 32 + 32 * 8 * 2624
    assert LLAMA3_8B.bytes_per_block / four.payload_bytes > 3.12
    assert LLAMA3_8B.bytes_per_block / two.payload_bytes > 5.11


def test_formats_that_would_not_save_bytes_are_not_used():
    assert CodecFormat.of(LLAMA3_8B, "exact") is None
    assert CodecFormat.of(KVLayout(2, 1, 2, 32, "bfloat16"), "kivi4") is None  # 1-token blocks: stats outweigh
    assert CodecFormat.of(KVLayout(2, 16, 2, 12, "bfloat16"), "kivi4") is None  # head_dim not a multiple of 8
    assert CodecFormat.of(KVLayout(2, 16, 2, 32, "float8_e4m3fn"), "kivi4") is None
    assert [value_group(d) for d in (8, 64, 96, 128, 256)] == [8, 64, 32, 128, 128]
