"""The router's prefix index over chained block hashes."""

from __future__ import annotations

from cluster.index.prefix_index import PrefixIndex
from engine.block_hash import ROOT_HASH, hash_blocks
from kvstore.keys import Tier
from kvstore.kv_events import EventKind, KVEvent, block_ids


def chain(tokens, salt=b""):
    hashes = hash_blocks(tokens, 4, salt)
    return list(zip(hashes, [ROOT_HASH] + hashes[:-1]))


def stored(worker, pairs, tier=Tier.GPU):
    hashes, parents = zip(*pairs)
    return KVEvent(worker, EventKind.STORED, tier, hashes, parents)


def test_longest_prefix_per_worker_and_eviction():
    index = PrefixIndex()
    a = chain(list(range(16)))            # 4 blocks
    b = chain(list(range(8)) + [9] * 8)  # shares 2 blocks with a
    index.apply(stored("w1", a))
    index.apply(stored("w2", b[:3]))
    query = [h for h, _ in a]
    assert index.matched_blocks(query) == {"w1": 4, "w2": 2}
    index.apply(KVEvent("w1", EventKind.EVICTED, hashes=(a[1][0],)))
    assert index.matched_blocks(query) == {"w1": 1, "w2": 2}
    index.apply(KVEvent("w2", EventKind.CLEARED))
    assert index.matched_blocks(query) == {"w1": 1}
    index.apply(KVEvent("w1", EventKind.EVICTED, hashes=tuple(h for h, _ in a)))
    assert len(index) == 0 and index.matched_blocks(query) == {}


def test_salted_chains_do_not_match_and_events_round_trip():
    index = PrefixIndex()
    event = stored("w1", chain(list(range(8)), b"tenant-a"), Tier.HOST)
    index.apply(KVEvent.decode(event.encode()))
    ids = block_ids  # decoded events carry 64-bit block ids
    assert index.matched_blocks(ids([h for h, _ in chain(list(range(8)), b"tenant-b")]).tolist()) == {}
    assert index.matched_blocks(ids([h for h, _ in chain(list(range(8)), b"tenant-a")]).tolist()) == {"w1": 2}
    assert index.nodes[block_ids(event.hashes)[0]].holders == {"w1": Tier.HOST}


def test_lost_parent_event_is_tolerated():
    index = PrefixIndex()
    pairs = chain(list(range(12)))
    index.apply(stored("w1", pairs[1:]))  # the first block's event never arrived
    assert index.matched_blocks([h for h, _ in pairs]) == {}
    index.apply(stored("w1", pairs[:1]))
    assert index.matched_blocks([h for h, _ in pairs]) == {"w1": 3}


def test_predicted_blocks_match_until_confirmed_or_expired():
    index = PrefixIndex()
    a, b = chain(list(range(16))), chain(list(range(100, 116)))
    index.predict("w1", [h for h, _ in a], expires_at=10.0)
    index.predict("w2", [h for h, _ in b], expires_at=10.0)
    assert index.matched_blocks([h for h, _ in a]) == {"w1": 4}, "a routed prompt counts before its events"
    index.apply(stored("w1", a[:2]))           # the first two blocks confirmed by the worker
    index.expire(now=10.0)
    assert index.matched_blocks([h for h, _ in a]) == {"w1": 2}, "unconfirmed predictions expire"
    assert index.matched_blocks([h for h, _ in b]) == {} and len(index) == 2


def test_prediction_leaves_blocks_already_held_alone():
    index = PrefixIndex()
    a = chain(list(range(16)))
    index.apply(stored("w1", a))
    index.predict("w1", [h for h, _ in a], expires_at=1.0)
    index.expire(now=2.0)
    assert index.matched_blocks([h for h, _ in a]) == {"w1": 4}
    index.predict("w2", [h for h, _ in a], expires_at=3.0)
    index.apply(KVEvent("w2", EventKind.EVICTED, hashes=(a[3][0],)))  # evicted before it expired
    index.expire(now=4.0)
    assert index.matched_blocks([h for h, _ in a]) == {"w1": 4} and not index.predicted
