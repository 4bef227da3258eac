"""The router's segment index, fed through a real redis-server's KV event stream, and the
prefill pick it drives (segments against load, as prefixes)."""

from __future__ import annotations

import uuid

import redis

from cluster.cluster_view import ClusterView
from cluster.index.compact_index import CompactPrefixIndex
from cluster.pool_handles import IMBALANCE_SLACK_TOKENS, Pools, Replica
from engine.block_hash import ROOT_HASH, hash_blocks
from engine.segments.spec import SegmentReuse, segment_hash
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventPublisher, KVEventSubscriber
from tests.segments.conftest import tokens

SEG, OTHER = tokens(64, 1), tokens(48, 2)


def prompt(prefix_seed: int) -> tuple[list[int], SegmentReuse]:
    head = tokens(40, prefix_seed)
    return head + SEG + tokens(8, 9), SegmentReuse(((40, 104),), recompute_ratio=0.25)


def test_segment_events_through_redis_reach_the_segment_index_and_not_the_prefix_index(redis_url):
    client, keys = redis.Redis.from_url(redis_url), RedisKeys(f"t-{uuid.uuid4().hex[:10]}")
    w1, w2 = KVEventPublisher(client, keys, "w1"), KVEventPublisher(client, keys, "w2")
    blocks = hash_blocks(list(range(32)), 16)
    w1.stored(list(zip(blocks, [ROOT_HASH] + blocks[:-1])))
    w1.segments([(segment_hash(SEG), 1), (segment_hash(OTHER), 2)], [])
    w2.segments([(segment_hash(SEG, b"tenant-b"), 1)], [])
    w2.cleared()
    w2.segments([(segment_hash(OTHER), 3)], [])
    w1.segments([], [segment_hash(OTHER)])
    view = ClusterView(Pools(), 16, None)
    batch = KVEventSubscriber(client, keys).read_batch(0)
    prefixes = CompactPrefixIndex()
    prefixes.apply_batch(batch)
    view.segments.apply(batch)
    assert len(prefixes) == 2 and batch.num_blocks == 2  # segment ids never became blocks
    ids = {name: int.from_bytes(segment_hash(seg, salt)[:8], "little")
           for name, seg, salt in (("seg", SEG, b""), ("other", OTHER, b""), ("seg-b", SEG, b"tenant-b"))}
    assert view.segments.held == {ids["seg"]: {"w1": 1}, ids["other"]: {"w2": 3}}  # w2's tenant-b one: cleared
    reuse = prompt(5)[1]
    shape = view.shape(prompt(5)[0], None, reuse)
    assert shape.segment_tokens == {"w1": 64 - 16}  # a quarter recomputed
    assert view.shape(prompt(5)[0], "tenant-b", reuse).segment_tokens == {}  # another tenant's salt


def replica(name: str, pending: int = 0) -> Replica:
    return Replica(name, "prefill", actor=None, pending_tokens=pending)


def test_prefill_goes_where_its_segments_are_unless_that_replica_is_busy():
    r1, r2 = replica("p1"), replica("p2")
    view = ClusterView(Pools(prefill=[r1, r2]), 16, None)
    first, reuse = prompt(5)
    shape = view.shape(first, None, reuse)
    assert shape.segment_tokens == {}
    picked = view.pick_prefill([r1, r2], shape)
    view.routed(picked, shape)  # predicted to keep the segment it computes
    second, reuse = prompt(6)
    shape = view.shape(second, None, reuse)
    assert shape.segment_tokens == {picked.worker_id: 48}
    other = r2 if picked is r1 else r1
    for _ in range(3):
        assert view.pick_prefill([r2, r1], shape) is picked
    picked.pending_tokens = 2 * IMBALANCE_SLACK_TOKENS  # the holder runs far ahead: load wins
    assert view.pick_prefill([r1, r2], shape) is other
    view.segments.clear(picked.worker_id)
    assert view.shape(second, None, reuse).segment_tokens == {}
