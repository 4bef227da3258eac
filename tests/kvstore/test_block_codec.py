"""Gather/scatter between a paged cache and staging buffers: exact bytes, clear id errors."""

from __future__ import annotations

import pytest
import torch

from kvstore.block_codec import (
    as_words,
    block_bytes,
    block_index_tensor,
    block_major_shape,
    gather_block_major,
    gather_layers,
    layer_chunk,
    scatter_block_major,
    scatter_layers,
)


def cache(head_dim: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((3, 2, 10, 4, 2, head_dim), generator=gen).to(dtype)


@pytest.mark.parametrize("head_dim,dtype,word", [(8, torch.bfloat16, torch.int64), (3, torch.bfloat16, torch.int16),
                                                 (5, torch.float32, torch.int32)])
def test_layer_chunks_round_trip_exactly(head_dim: int, dtype: torch.dtype, word: torch.dtype) -> None:
    src, dst = cache(head_dim, dtype, 1), cache(head_dim, dtype, 2)
    src_ids, dst_ids = torch.tensor([7, 2, 9]), torch.tensor([0, 5, 3])
    for first, last in ((0, 2), (2, 3)):
        chunk = gather_layers(src, src_ids, first, last)
        assert chunk.dtype == word and chunk.shape == layer_chunk(dst, 3, first, last).shape
        scatter_layers(dst, dst_ids, first, chunk)
    assert torch.equal(as_words(dst[:, :, dst_ids]), as_words(src[:, :, src_ids]))


def test_block_major_round_trip_and_byte_rows() -> None:
    src, dst = cache(8, torch.bfloat16, 3), cache(8, torch.bfloat16, 4)
    ids = torch.tensor([4, 1])
    staging = gather_block_major(src, ids, torch.empty(block_major_shape(src, 2), dtype=src.dtype))
    rows = block_bytes(staging)
    assert rows.shape == (2, 3 * 2 * 4 * 2 * 8 * 2)
    assert rows[1].tobytes() == src[:, :, 1].contiguous().view(torch.uint8).numpy().tobytes()
    scatter_block_major(dst, torch.tensor([6, 0]), staging)
    assert torch.equal(as_words(dst[:, :, [6, 0]]), as_words(src[:, :, [4, 1]]))


def test_block_ids_are_checked() -> None:
    with pytest.raises(IndexError, match=r"block ids must lie in \[0, 10\), got min 0 max 10"):
        block_index_tensor([0, 10], 10, torch.device("cpu"))
    with pytest.raises(ValueError, match="must not repeat"):
        block_index_tensor([3, 3], 10, torch.device("cpu"))
    assert block_index_tensor([], 10, torch.device("cpu")).numel() == 0
