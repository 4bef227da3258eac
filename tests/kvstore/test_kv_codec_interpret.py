"""The KV codec's Triton kernels under Triton's interpreter produce the torch path's bytes.

As in tests/test_triton_interpret.py, the ``case_*`` functions run in a child pytest with
TRITON_INTERPRET=1 (tests/interpreter.py). Both directions are compared byte for byte: the
payloads the kernels write (raw blocks excepted, whose rows are unused) and the caches they
decode into, for every cache dtype, both bit widths, and shapes with a block size, head count
and head_dim that are not powers of two (masked tiles).
"""

from __future__ import annotations

import zlib

import pytest
import torch

from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout
from tests.interpreter import run_interpreter_cases

# (layers, block size, kv heads, head_dim), dtype: every dtype on one shape, the odd shapes once each
LAYOUTS = [KVLayout(2, 4, 2, 8, "bfloat16"), KVLayout(2, 4, 2, 8, "float16"), KVLayout(2, 4, 2, 8, "float32"),
           KVLayout(1, 16, 3, 96, "bfloat16"), KVLayout(2, 5, 1, 16, "float16")]


def test_codec_kernels_under_the_triton_interpreter() -> None:
    run_interpreter_cases(__file__)


def _cache(layout: KVLayout, num_blocks: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (layout.num_layers, 2, num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    kv = torch.randn(shape, generator=g) * 3
    kv[0, 0, 2, :, 0, 1] = 1.5          # a constant key channel: scale 0
    kv[0, 1, 4, 0, 0, :] = -2.0 ** -20  # a value group of one tiny value: fp16 subnormal stats
    kv[-1, 1, 1, 1, -1, 0] = -0.0
    kv[0, 0, 5, :4, 0, 2] = torch.tensor([0.0, 15.0, 2.5, 0.5])  # scale 1 (4 bits) or 5 (2 bits): ties, to even
    return kv.to(layout.torch_dtype)


@pytest.mark.parametrize("layout", LAYOUTS, ids=[lay.tag for lay in LAYOUTS])
@pytest.mark.parametrize("codec", ["kivi4", "kivi2"])
def case_kernels_write_the_reference_bytes(codec: str, layout: KVLayout) -> None:
    fmt = CodecFormat.of(layout, codec)
    assert fmt is not None
    kv, ids = _cache(layout, 6, seed=zlib.crc32(f"{codec}{layout.tag}".encode())), torch.tensor([2, 5, 0, 4])
    ref, ref_raw = encode(kv, ids, fmt, impl="torch")
    got, got_raw = encode(kv, ids, fmt, impl="triton")
    assert torch.equal(ref_raw, got_raw) and not ref_raw.any()
    assert torch.equal(ref, got)
    by_ref, by_kernel = torch.full_like(kv, 7), torch.full_like(kv, 7)
    decode(by_ref, ids, ref, fmt, impl="torch")
    decode(by_kernel, ids, ref, fmt, impl="triton")
    assert torch.equal(by_ref.view(torch.uint8), by_kernel.view(torch.uint8))
    assert not torch.equal(by_ref.view(torch.uint8), kv.view(torch.uint8))  # decoded: lossy, not a copy


def case_kernels_flag_the_same_raw_blocks() -> None:
    layout = KVLayout(2, 4, 2, 8, "bfloat16")
    fmt = CodecFormat.of(layout, "kivi4")
    kv = _cache(layout, 6, seed=7)
    kv[1, 0, 1, 0, 1, 3], kv[1, 0, 1, 1, 1, 3] = 7e4, -7e4  # a key channel spanning beyond fp16
    kv[0, 1, 3, 2, 0, 5] = float("nan")
    kv[0, 0, 4, 2, 0, 5] = float("-inf")
    ids = torch.tensor([0, 1, 3, 4, 5])
    ref, ref_raw = encode(kv, ids, fmt, impl="torch")
    got, got_raw = encode(kv, ids, fmt, impl="triton")
    assert ref_raw.tolist() == got_raw.tolist() == [False, True, True, True, False]
    assert torch.equal(ref[~ref_raw], got[~got_raw])
