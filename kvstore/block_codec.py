"""Moving a request's blocks between a paged KV cache and contiguous staging buffers.

``kv[:, :, ids]`` is scattered across the cache; transfers want one contiguous buffer.
Two staging orders are used: layer-major chunks ``[layers, 2, n, ...]`` for handoffs
(a chunk of layers can travel while the next is gathered) and block-major
``[n, L, 2, ...]`` for the host tier (each block's bytes are one contiguous range).
Each gather or scatter is a single index_select / index_copy_ pass over the cache viewed
as 8-byte words: PyTorch's index kernels move one element per thread, so moving bf16 as
int64 does a quarter of the work for the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kvstore.errors import LayoutMismatchError
from kvstore.layout import KVLayout


def block_index_tensor(block_ids: Sequence[int] | torch.Tensor, num_blocks: int,
                       device: torch.device) -> torch.Tensor:
    """``block_ids`` as an int64 tensor on ``device``; rejects out-of-range or repeated ids."""
    ids = torch.as_tensor(block_ids, dtype=torch.int64).flatten()
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_blocks:
            raise IndexError(f"block ids must lie in [0, {num_blocks}), got min {low} max {high}")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("block ids must not repeat")
    return ids.to(device)


def checked_blocks(kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor) -> tuple[KVLayout, torch.Tensor]:
    """The layout of cache ``kv`` and ``block_ids`` as an index tensor, both checked (at least one id)."""
    layout = KVLayout.of_cache(kv)
    layout.check_cache(kv)
    ids = block_index_tensor(block_ids, kv.shape[2], kv.device)
    if ids.numel() == 0:
        raise ValueError("a handoff needs at least one block id")
    return layout, ids


_WORDS = (torch.int64, torch.int32, torch.int16, torch.uint8)


def as_words(t: torch.Tensor) -> torch.Tensor:
    """The same bytes as the widest integer type that divides the last dimension and offset."""
    row_bytes, offset_bytes = t.shape[-1] * t.element_size(), t.storage_offset() * t.element_size()
    word = next(w for w in _WORDS if row_bytes % w.itemsize == 0 and offset_bytes % w.itemsize == 0)
    return t.view(word)


def gather_layers(kv: torch.Tensor, ids: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Contiguous copy of layers first..last-1 of blocks ``ids``, as words (see layer_chunk)."""
    return as_words(kv[first:last]).index_select(2, ids)


def layer_chunk(kv: torch.Tensor, num_blocks: int, first: int, last: int) -> torch.Tensor:
    """An empty buffer shaped like ``gather_layers(kv, <num_blocks ids>, first, last)``."""
    words = as_words(kv[first:last])
    return torch.empty((last - first, 2, num_blocks, *words.shape[3:]), dtype=words.dtype, device=kv.device)


def scatter_layers(kv: torch.Tensor, ids: torch.Tensor, first: int, chunk: torch.Tensor) -> None:
    """Write a gather_layers chunk back into ``kv`` at layers first.., blocks ``ids``."""
    as_words(kv[first:first + chunk.shape[0]]).index_copy_(2, ids, chunk)


def block_major_shape(kv: torch.Tensor, num_blocks: int) -> tuple[int, ...]:
    return (num_blocks, kv.shape[0], kv.shape[1], *kv.shape[3:])


def gather_block_major(kv: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Copy blocks ``ids`` into ``out`` (``[n, L, 2, block_size, H, D]``, any device); returns it."""
    if out.device == kv.device:
        torch.index_select(as_words(kv), 2, ids, out=as_words(out).permute(1, 2, 0, 3, 4, 5))
    else:
        out.copy_(gather_block_major(kv, ids, torch.empty(out.shape, dtype=kv.dtype, device=kv.device)))
    return out


def scatter_block_major(kv: torch.Tensor, ids: torch.Tensor, staging: torch.Tensor) -> None:
    """Inverse of gather_block_major; returns once ``staging`` may be reused."""
    source = as_words(staging.to(kv.device, non_blocking=True))
    as_words(kv).index_copy_(2, ids, source.permute(1, 2, 0, 3, 4, 5))
    if kv.device.type == "cuda":
        torch.cuda.current_stream(kv.device).synchronize()


def block_bytes(staging: torch.Tensor) -> np.ndarray:
    """A CPU block-major staging buffer as a writable ``[n, bytes_per_block]`` uint8 view."""
    if staging.device.type != "cpu" or not staging.is_contiguous():
        raise LayoutMismatchError("block_bytes needs a contiguous CPU staging tensor")
    return staging.view(torch.uint8).reshape(staging.shape[0], -1).numpy()
