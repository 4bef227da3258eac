"""kvstore fixtures: a KVStore on the session's real redis-server, under a fresh prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch

from kvstore.config import KVStoreConfig
from kvstore.layout import KVLayout
from kvstore.store import KVStore

SMALL = KVLayout(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8, dtype="bfloat16")


def make_store(redis_url: str, **overrides) -> KVStore:
    config = KVStoreConfig(redis_url=redis_url, key_prefix=f"t-{uuid.uuid4().hex[:12]}", **overrides)
    return KVStore.connect(config)


@pytest.fixture
def store(redis_url: str) -> Iterator[KVStore]:
    """A store with its own key prefix; asserts no lease is left, then wipes the prefix."""
    kv_store = make_store(redis_url, host_tier_bytes=64 * SMALL.bytes_per_block)
    yield kv_store
    leftover = kv_store.leases.pinned_blocks()
    kv_store.wipe()
    kv_store.close()
    assert leftover == 0, f"{leftover} blocks still pinned by leases after the test"


def random_cache(layout: KVLayout, num_blocks: int, seed: int) -> torch.Tensor:
    """A cache of random values (every bit pattern matters: compare bytes, not floats)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (layout.num_layers, 2, num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    return torch.randn(shape, generator=gen).to(layout.torch_dtype)
