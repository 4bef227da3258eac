"""Host tier payloads in a real redis-server: exact bytes, checksums, capacity and LRU."""

from __future__ import annotations

import pytest
import torch

from engine.block_hash import hash_blocks
from kvstore.block_key import block_keys
from kvstore.config import KVStoreConfig
from kvstore.errors import CapacityError, ChecksumMismatchError, MissingBlocksError, RedisUnavailableError
from kvstore.keys import HOST_WORKER, Holder, Tier
from kvstore.store import KVStore
from tests.conftest import free_port
from tests.kvstore.conftest import SMALL, random_cache

pytestmark = pytest.mark.redis


def keys_for(n: int, start: int = 0) -> list:
    tokens = list(range(start, start + n * SMALL.block_size))
    return block_keys(hash_blocks(tokens, SMALL.block_size), "m", SMALL)


def test_put_get_moves_exact_bytes_between_non_contiguous_blocks(store: KVStore) -> None:
    src, dst = random_cache(SMALL, 40, seed=1), random_cache(SMALL, 40, seed=2)
    keys = keys_for(7)
    src_ids, dst_ids = [31, 2, 17, 5, 39, 0, 22], [8, 30, 1, 12, 3, 27, 19]
    assert store.host.put(keys, src, src_ids) == 7
    assert store.host.put(keys, src, src_ids) == 0  # already there
    assert store.host.used_bytes() == 7 * SMALL.bytes_per_block
    before = dst.clone()
    store.host.get(keys, dst, dst_ids)
    assert torch.equal(dst[:, :, dst_ids].view(torch.int16), src[:, :, src_ids].view(torch.int16))
    untouched = [i for i in range(40) if i not in dst_ids]
    assert torch.equal(dst[:, :, untouched].view(torch.int16), before[:, :, untouched].view(torch.int16))
    assert store.index.holders(keys[0]) == (Holder(HOST_WORKER, Tier.HOST, -1),)


def test_corrupted_payload_is_detected(store: KVStore) -> None:
    kv = random_cache(SMALL, 4, seed=3)
    keys = keys_for(2)
    store.host.put(keys, kv, [0, 1])
    payload = store.keys.payload(str(keys[1]))
    data = bytearray(store.redis.hget(payload, "d"))
    data[100] ^= 0xFF  # one flipped byte, checksum left as stored
    store.redis.hset(payload, "d", bytes(data))
    with pytest.raises(ChecksumMismatchError, match=f"host block {keys[1]}: checksum mismatch"):
        store.host.get(keys, kv, [2, 3])


def test_missing_block_is_a_clear_error(store: KVStore) -> None:
    kv = random_cache(SMALL, 4, seed=4)
    with pytest.raises(MissingBlocksError, match="host tier does not hold block"):
        store.host.get(keys_for(1), kv, [0])


def test_capacity_evicts_least_recently_used_and_skips_pinned(redis_url: str) -> None:
    from tests.kvstore.conftest import make_store
    kv_store = make_store(redis_url, host_tier_bytes=4 * SMALL.bytes_per_block)
    try:
        kv = random_cache(SMALL, 8, seed=5)
        a, b, c = keys_for(2, 0), keys_for(2, 1000), keys_for(2, 2000)
        kv_store.host.put(a, kv, [0, 1])
        kv_store.host.put(b, kv, [2, 3])
        kv_store.host.get(a, kv, [4, 5])  # a is now more recent than b
        kv_store.host.put(c, kv, [6, 7])  # evicts b
        assert kv_store.host.contains(a + b + c) == [True, True, False, False, True, True]
        assert kv_store.index.holders(b[0]) == ()
        with kv_store.leases.pinned(c + a):
            with pytest.raises(CapacityError, match="pinned by leases"):
                kv_store.host.put(b[:1], kv, [2])
        kv_store.host.put(b[:1], kv, [2])  # evicts a's tail block: c was written after a's read
        assert kv_store.host.contains(c + a) == [True, True, True, False]
        assert kv_store.host.used_bytes() == 4 * SMALL.bytes_per_block
        with pytest.raises(CapacityError, match="exceeds the host tier's capacity"):
            kv_store.host.put(keys_for(5, 3000), random_cache(SMALL, 5, seed=6), range(5))
        assert kv_store.leases.pinned_blocks() == 0
    finally:
        kv_store.wipe()
        kv_store.close()


def test_unreachable_redis_names_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError, match=f"cannot reach Redis at {url}"):
        KVStore.connect(KVStoreConfig(redis_url=url, connect_timeout_s=1.0))


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="redis_url must start with"):
        KVStoreConfig(redis_url="localhost:6379")
    with pytest.raises(ValueError, match="host_tier_bytes must be > 0"):
        KVStoreConfig(redis_url="redis://x", host_tier_bytes=0)
