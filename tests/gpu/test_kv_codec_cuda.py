"""The KV codec's Triton kernels on CUDA: the CPU torch path's bytes, both directions, and the host
tier compressing from / decoding into a GPU cache (real redis-server)."""

from __future__ import annotations

import pytest
import torch

from engine.block_hash import hash_blocks
from kvstore.block_key import block_keys
from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout
from tests.kvstore.conftest import make_store

pytestmark = pytest.mark.gpu

LLAMA3_8B = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")


def _cache(layout: KVLayout, num_blocks: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (layout.num_layers, 2, num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    kv = torch.randn(shape, generator=g)
    kv[:, 0] = kv[:, 0] * 2 + 8 * torch.randn(layout.head_dim, generator=g)  # outlier key channels
    kv[0, 0, 2, :, 0, 1] = 1.5  # a constant key channel
    return kv.to(layout.torch_dtype)


@pytest.mark.parametrize("layout", [LLAMA3_8B, KVLayout(3, 16, 3, 96, "float16"), KVLayout(2, 5, 2, 64, "float32")],
                         ids=["llama3-8b", "d96-fp16", "b5-fp32"])
@pytest.mark.parametrize("codec", ["kivi4", "kivi2"])
def test_kernels_write_the_cpu_reference_bytes(codec: str, layout: KVLayout) -> None:
    fmt = CodecFormat.of(layout, codec)
    cpu = _cache(layout, 40, seed=1)
    gpu = cpu.cuda()
    ids = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:33]
    ref, ref_raw = encode(cpu, ids, fmt, impl="torch")
    got, got_raw = encode(gpu, ids.cuda(), fmt)
    assert torch.equal(ref_raw, got_raw) and not ref_raw.any()
    assert torch.equal(ref, got.cpu())
    by_ref, by_kernel = torch.zeros_like(cpu), torch.zeros_like(gpu)
    decode(by_ref, ids, ref, fmt, impl="torch")
    decode(by_kernel, ids.cuda(), ref, fmt)  # from host memory, as the host tier does
    assert torch.equal(by_ref.view(torch.uint8), by_kernel.cpu().view(torch.uint8))


def test_nonfinite_blocks_are_flagged_on_the_gpu_too() -> None:
    layout = KVLayout(2, 16, 2, 64, "bfloat16")
    kv = _cache(layout, 4, seed=3)
    kv[1, 0, 1, 3, 1, 7] = float("nan")
    kv[0, 1, 2, 0, 0, 4], kv[0, 1, 2, 0, 0, 5] = 7e4, -7e4
    _, raw = encode(kv.cuda(), torch.arange(4, device="cuda"), CodecFormat.of(layout, "kivi4"))
    assert raw.tolist() == [False, True, True, False]


@pytest.mark.redis
def test_host_tier_with_the_codec_from_and_into_a_gpu_cache(redis_url: str) -> None:
    store = make_store(redis_url, host_tier_bytes=1 << 30, host_tier_codec="kivi4",
                       host_tier_codec_residual_tokens=0)
    try:
        src = _cache(LLAMA3_8B, 64, seed=4).cuda()
        dst = torch.zeros_like(src)
        keys = block_keys(hash_blocks(list(range(40 * 16)), 16), "m", LLAMA3_8B)
        src_ids, dst_ids = list(range(63, 23, -1)), list(range(40))
        assert store.host.put(keys, src, src_ids) == 40
        assert store.host.used_bytes() == 40 * CodecFormat.of(LLAMA3_8B, "kivi4").payload_bytes
        store.host.get(keys, dst, dst_ids)
        want = torch.zeros_like(src)
        fmt = CodecFormat.of(LLAMA3_8B, "kivi4")
        decode(want, torch.tensor(src_ids, device="cuda"), encode(src, torch.tensor(src_ids, device="cuda"), fmt)[0],
               fmt)
        assert torch.equal(dst[:, :, dst_ids].view(torch.int16), want[:, :, src_ids].view(torch.int16))
        assert store.leases.pinned_blocks() == 0
    finally:
        store.wipe()
        store.close()
