"""KVLayout validation and sizes; BlockKey identity and encoding."""

from __future__ import annotations

import pytest
import torch

from engine.block_hash import hash_blocks
from kvstore.block_key import BlockKey, block_keys
from kvstore.errors import LayoutMismatchError
from kvstore.layout import KVLayout

LLAMA3_8B = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")


def test_bytes_per_block_of_llama3_8b_is_2_mib_128_kib_per_token_64_kib_per_layer() -> None:
    assert LLAMA3_8B.bytes_per_block == 2 << 20
    assert LLAMA3_8B.bytes_per_block // LLAMA3_8B.block_size == 128 << 10  # Llama-3-8B's published KV per token
    assert LLAMA3_8B.bytes_per_block // LLAMA3_8B.num_layers == 64 << 10  # K and V of 16 tokens in one layer
    assert LLAMA3_8B.block_shape == (32, 2, 16, 8, 128)
    assert torch.empty(LLAMA3_8B.block_shape, dtype=torch.bfloat16, device="meta").nbytes == 2 << 20
    assert LLAMA3_8B.tag == "L32.B16.H8.D128.bfloat16"


@pytest.mark.parametrize("field,value,message", [
    ("num_layers", 0, "num_layers must be a positive int"),
    ("head_dim", 1.5, "head_dim must be a positive int"),
    ("dtype", "int8", "dtype must be one of"),
])
def test_layout_rejects_bad_fields(field: str, value, message: str) -> None:
    fields = dict(num_layers=2, block_size=16, num_kv_heads=2, head_dim=8, dtype="float32")
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        KVLayout(**fields)


def test_layout_of_cache_and_check() -> None:
    kv = torch.zeros(2, 2, 5, 16, 4, 8, dtype=torch.float16)
    layout = KVLayout.of_cache(kv)
    assert layout == KVLayout(2, 16, 4, 8, "float16")
    layout.check_cache(kv)
    with pytest.raises(LayoutMismatchError, match="expected L2.B16.H4.D8.bfloat16"):
        KVLayout(2, 16, 4, 8, "bfloat16").check_cache(kv)
    with pytest.raises(LayoutMismatchError, match="got shape"):
        KVLayout.of_cache(torch.zeros(2, 3, 4))


def test_block_key_is_stable_and_separates_models_and_layouts() -> None:
    hashes = hash_blocks(list(range(40)), 16)
    keys = block_keys(hashes, "llama", LLAMA3_8B)
    assert len(keys) == 2 and len(keys[0].encoded) == 24 and len(str(keys[0])) == 48
    assert str(keys[0]) == str(BlockKey(hashes[0], "llama", LLAMA3_8B))
    assert str(keys[0]).endswith(hashes[0].hex())
    assert str(BlockKey(hashes[0], "other", LLAMA3_8B)) != str(keys[0])
    fp16 = KVLayout(32, 16, 8, 128, "float16")
    assert str(BlockKey(hashes[0], "llama", fp16)) != str(keys[0])


def test_block_key_rejects_bad_hash() -> None:
    with pytest.raises(ValueError, match="must be 16 bytes"):
        BlockKey(b"short", "m", LLAMA3_8B)
    with pytest.raises(ValueError, match="model_id"):
        BlockKey(b"\x00" * 16, "", LLAMA3_8B)
