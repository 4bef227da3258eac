"""The shape and dtype of a worker's paged KV cache, and what one block of it weighs.

Each worker holds one tensor ``kv: [num_layers, 2, num_blocks, block_size, num_kv_heads,
head_dim]``. Two workers can exchange blocks only if their layouts are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstore.errors import LayoutMismatchError

# Canonical dtype names; the position is the wire code (append only).
KV_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
}
_NAME_OF = {dtype: name for name, dtype in KV_DTYPES.items()}


@dataclass(frozen=True)
class KVLayout:
    """Geometry of one worker's KV cache (everything but the block count)."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("num_layers", "block_size", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVLayout.{name} must be a positive int, got {value!r}")
        if self.dtype not in KV_DTYPES:
            raise ValueError(f"KVLayout.dtype must be one of {sorted(KV_DTYPES)}, got {self.dtype!r}")

    @classmethod
    def of_cache(cls, kv: torch.Tensor) -> KVLayout:
        """The layout of an existing ``[L, 2, N, block_size, H_kv, D]`` cache tensor."""
        if kv.dim() != 6 or kv.shape[1] != 2:
            raise LayoutMismatchError(
                f"a KV cache must be [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim], "
                f"got shape {tuple(kv.shape)}")
        if kv.dtype not in _NAME_OF:
            raise LayoutMismatchError(f"unsupported KV cache dtype {kv.dtype}")
        layers, _, _, block_size, heads, head_dim = kv.shape
        return cls(layers, block_size, heads, head_dim, _NAME_OF[kv.dtype])

    @property
    def torch_dtype(self) -> torch.dtype:
        return KV_DTYPES[self.dtype]

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of one block across all layers: ``[L, 2, block_size, H_kv, D]``."""
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_block(self) -> int:
        elements = 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim
        return elements * self.torch_dtype.itemsize

    @property
    def tag(self) -> str:
        """A short stable text form, e.g. ``L32.B16.H8.D128.bfloat16``."""
        return f"L{self.num_layers}.B{self.block_size}.H{self.num_kv_heads}.D{self.head_dim}.{self.dtype}"

    def check_cache(self, kv: torch.Tensor) -> None:
        """Raise LayoutMismatchError unless ``kv`` is a cache of this layout."""
        actual = KVLayout.of_cache(kv)
        if actual != self:
            raise LayoutMismatchError(f"KV cache has layout {actual.tag}, expected {self.tag}")
        if not kv.is_contiguous():
            raise LayoutMismatchError("KV cache tensor must be contiguous")
