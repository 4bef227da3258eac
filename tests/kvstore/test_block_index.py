"""BlockIndex and leases against a real redis-server."""

from __future__ import annotations

import time

import pytest

from engine.block_hash import hash_blocks
from kvstore.block_key import block_keys
from kvstore.keys import Holder, Tier
from kvstore.store import KVStore
from tests.kvstore.conftest import SMALL

pytestmark = pytest.mark.redis


def keys_of(tokens: list[int], model: str = "m") -> list:
    return block_keys(hash_blocks(tokens, SMALL.block_size), model, SMALL)


def test_lookup_prefix_returns_holders_of_the_longest_held_run(store: KVStore) -> None:
    keys = keys_of(list(range(24)))  # 6 blocks
    store.index.add("prefill-0", Tier.GPU, keys[:4], [10, 11, 12, 13])
    store.index.add("decode-1", Tier.GPU, keys[:2], [7, 3])
    store.index.add("prefill-0", Tier.GPU, keys[5:], [20])  # not reachable: block 4 missing
    run = store.index.lookup_prefix(keys)
    assert len(run) == 4
    assert run[0] == (Holder("decode-1", Tier.GPU, 7), Holder("prefill-0", Tier.GPU, 10))
    assert run[3] == (Holder("prefill-0", Tier.GPU, 13),)
    assert store.index.lookup_prefix(keys_of(list(range(24)), model="other")) == []


def test_remove_and_deregister_leave_no_entries(store: KVStore) -> None:
    keys = keys_of(list(range(40)))
    store.index.add("w0", Tier.GPU, keys, list(range(10)))
    store.index.add("w0", Tier.HOST, keys[:3], [-1, -1, -1])
    store.index.add("w1", Tier.GPU, keys[:1], [0])
    assert store.index.remove("w0", Tier.GPU, keys[8:]) == 2
    assert store.index.count("w0", Tier.GPU) == 8
    assert store.index.deregister("w0") == 11
    assert store.index.count("w0", Tier.GPU) == store.index.count("w0", Tier.HOST) == 0
    assert store.index.holders(keys[0]) == (Holder("w1", Tier.GPU, 0),)
    assert store.index.holders(keys[1]) == ()
    assert store.index.deregister("w1") == 1
    assert not list(store.redis.scan_iter(match=f"{store.keys.prefix}:loc:*"))


def test_lru_order_evicts_tails_first_and_touch_refreshes(store: KVStore) -> None:
    a, b = keys_of(list(range(12))), keys_of(list(range(100, 112)))
    store.index.add("w", Tier.GPU, a, [0, 1, 2])
    store.index.add("w", Tier.GPU, b, [3, 4, 5])
    order = [str(k) for k in (a[2], a[1], a[0], b[2], b[1], b[0])]
    assert store.index.lru_order("w", Tier.GPU) == order
    store.index.touch("w", Tier.GPU, a[:2])
    assert store.index.lru_order("w", Tier.GPU, limit=4) == [str(k) for k in (a[2], b[2], b[1], b[0])]
    store.index.deregister("w")


def test_leases_pin_refcount_and_release(store: KVStore) -> None:
    keys = keys_of(list(range(16)))
    store.index.add("w", Tier.GPU, keys[:3], [0, 1, 2])
    first = store.leases.acquire(keys)
    assert first.keys == tuple(map(str, keys[:3])) and not first.complete
    with store.leases.pinned(keys[:2]) as second:
        assert second.complete
        assert [store.leases.refcount(k) for k in keys] == [2, 2, 1, 0]
    assert store.leases.refcount(keys[0]) == 1
    store.leases.release(first)
    store.leases.release(first)  # idempotent
    assert store.leases.pinned_blocks() == 0
    store.index.deregister("w")


def server_ms(store: KVStore) -> int:
    """Redis's clock in ms, as the lease scripts read it (TIME)."""
    seconds, micros = store.redis.time()
    return seconds * 1000 + micros // 1000


def test_lease_expires_by_itself(redis_url: str) -> None:
    """Without a release, a lease's pins lapse at the expiry it recorded, on Redis's clock: the test
    waits for that moment (read from the pin itself), not for a guessed sleep."""
    from tests.kvstore.conftest import make_store
    kv_store = make_store(redis_url, lease_ttl_s=1.0)
    try:
        keys = keys_of(list(range(8)))
        kv_store.index.add("w", Tier.GPU, keys, [0, 1])
        start = server_ms(kv_store)
        lease = kv_store.leases.acquire(keys)
        expiry = kv_store.redis.zscore(kv_store.keys.pin(lease.keys[1]), lease.lease_id)
        assert start + 1000 <= expiry <= server_ms(kv_store) + 1000
        assert kv_store.leases.refcount(keys[1]) == 1  # read within the second the lease lives
        while (now := server_ms(kv_store)) <= expiry + 1:  # the pin set's own TTL ends then too
            time.sleep((expiry + 2 - now) / 1000)
        assert kv_store.leases.refcount(keys[1]) == 0
        assert kv_store.leases.pinned_blocks() == 0
        assert not kv_store.redis.exists(*(kv_store.keys.pin(k) for k in lease.keys))
        assert kv_store.leases.renew(lease) == 2  # renewing re-pins while the blocks are held
        kv_store.leases.release(lease)
    finally:
        kv_store.wipe()
        kv_store.close()
