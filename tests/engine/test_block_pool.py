"""Block pool and KV cache manager: exact block ids, refcounts, eviction order."""

from __future__ import annotations

import pytest

from engine.block_hash import hash_blocks
from engine.block_pool import BlockPool
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams


def req(tokens: list[int], rid: str = "r") -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4, temperature=0))


def test_allocate_and_free_in_order():
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(1) == [2]
    pool.free([0, 1])
    assert pool.num_free == 3
    assert pool.allocate(3) == [0, 1, 3]  # uncached blocks are reused first, lowest first
    with pytest.raises(RuntimeError, match="asked for 1 blocks with 0 free"):
        pool.allocate(1)


def test_double_free_is_an_error():
    pool = BlockPool(2)
    ids = pool.allocate(1)
    pool.free(ids)
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free(ids)


def test_cached_blocks_survive_until_reallocated_lru_first():
    pool = BlockPool(4, enable_caching=True)
    a, b = pool.allocate(2)
    pool.commit(a, b"A" * 16, b"\0" * 16)
    pool.commit(b, b"B" * 16, b"A" * 16)
    pool.free([a, b])  # b (the tail) queued before a
    assert pool.lookup(b"A" * 16) == a and pool.lookup(b"B" * 16) == b
    assert pool.drain_events().stored == [(b"A" * 16, b"\0" * 16), (b"B" * 16, b"A" * 16)]
    assert pool.allocate(2) == [2, 3]  # never-used blocks go first
    assert pool.allocate(1) == [b]     # then the least recently freed cached block
    assert pool.lookup(b"B" * 16) is None
    assert pool.drain_events().evicted == [b"B" * 16]


def test_a_duplicate_in_use_takes_over_when_the_cached_copy_is_evicted():
    """Two requests prefilled one prompt in the same step: the second copy is offered once
    (the per-step commit is incremental) and must inherit the content when the first goes."""
    pool = BlockPool(3, enable_caching=True)
    first, second, spare = pool.allocate(3)
    pool.commit(first, b"A" * 16, b"\0" * 16)
    pool.commit(second, b"A" * 16, b"\0" * 16)  # same content: stays private, on standby
    assert pool.lookup(b"A" * 16) == first
    pool.free([first])
    pool.drain_events()
    assert pool.allocate(1) == [first]         # the cached copy is evicted...
    assert pool.lookup(b"A" * 16) == second    # ...and the copy still in use takes over, silently
    assert not pool.drain_events()
    pool.free([second])                        # now an ordinary cached free block
    pool.free([spare])
    assert pool.allocate(1) == [spare] and pool.lookup(b"A" * 16) == second
    assert pool.allocate(1) == [second] and pool.lookup(b"A" * 16) is None
    assert pool.drain_events().evicted == [b"A" * 16]


def test_a_freed_duplicate_leaves_standby():
    pool = BlockPool(2, enable_caching=True)
    first, second = pool.allocate(2)
    pool.commit(first, b"A" * 16, b"\0" * 16)
    pool.commit(second, b"A" * 16, b"\0" * 16)
    pool.free([second])                        # freed before the cached copy went: nothing to inherit
    pool.free([first])
    assert pool.allocate(2) == [second, first]  # the private block first, then the cached one
    assert pool.lookup(b"A" * 16) is None and not pool.standby and not pool.standby_hash


def test_prefix_match_shares_blocks_and_keeps_last_token_uncomputed():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    first = req(list(range(10)), "a")
    assert kv.match_prefix(first) == 0
    assert kv.allocate_slots(first, 10)
    first.num_computed_tokens = 10
    kv.commit_computed(first)
    assert first.block_hashes == hash_blocks(list(range(10)), 4)
    second = req(list(range(8)), "b")  # exactly two full cached blocks
    assert kv.match_prefix(second) == 4  # the last block is recomputed to get logits
    assert second.block_ids == first.block_ids[:1]
    third = req(list(range(9)), "c")
    assert kv.match_prefix(third) == 8
    assert kv.pool.ref_counts[first.block_ids[0]] == 3
    for r in (first, second, third):
        kv.free(r)
    assert kv.num_free_blocks == 8


def test_salt_separates_prefixes():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = req(list(range(9)), "a")
    a.cache_salt = b"tenant-1"
    kv.match_prefix(a)
    kv.allocate_slots(a, 9)
    a.num_computed_tokens = 9
    kv.commit_computed(a)
    b = req(list(range(9)), "b")
    b.cache_salt = b"tenant-2"
    assert kv.match_prefix(b) == 0
    c = req(list(range(9)), "c")
    c.cache_salt = b"tenant-1"
    assert kv.match_prefix(c) == 8


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    r = req(list(range(12)))
    assert not kv.allocate_slots(r, 12)
    assert r.block_ids == [] and kv.num_free_blocks == 2
