"""The router's prefix index stays bounded (issue 22): a block leaves it when no worker holds
it, its memory follows the blocks held through churn, and predictions are capped by one knob
(``router.max_predicted``) whose default is the same wherever it is read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cluster.bringup.registry import ClusterInfo
from cluster.cluster_view import ClusterView
from cluster.config import MAX_PREDICTED, RouterSection, parse_cluster_config
from cluster.index.compact_index import CompactPrefixIndex
from cluster.index.prefix_core import NumpyCore, native_core
from cluster.pool_handles import Pools
from kvstore.kv_events import EventBatch, EventKind, KVEvent

CORES = [NumpyCore] + ([native_core()] if native_core() else [])


@pytest.fixture(params=CORES, ids=lambda c: "numpy" if c is NumpyCore else "c")
def core(request):
    return request.param


def stored(worker: str, ids) -> KVEvent:
    ids = tuple(int(i) for i in ids)
    return KVEvent(worker, EventKind.STORED, hashes=ids, parents=(0, *ids[:-1]))


def evicted(worker: str, ids) -> KVEvent:
    return KVEvent(worker, EventKind.EVICTED, hashes=tuple(int(i) for i in ids))


def test_a_block_no_worker_holds_leaves_the_index(core):
    index = CompactPrefixIndex(core=core)
    index.apply(stored("a", range(10, 20)))
    index.apply(stored("b", range(10, 15)))
    index.apply(evicted("a", range(10, 20)))
    assert len(index) == 5 and index.matched_blocks(range(10, 20)) == {"b": 5}
    index.apply(KVEvent("b", EventKind.CLEARED))
    assert len(index) == 0 and index.size().blocks == 0
    index.predict("c", np.arange(30, 34, dtype=np.uint64), expires_at=5.0)
    assert len(index) == 4
    index.expire(now=5.0)
    assert len(index) == 0 and index.size().predicted == 0


def test_memory_follows_the_blocks_held_through_churn():
    """Workers store new chains and evict old ones: the C core's tables stay the size of what is
    held (about 20-35 bytes a block), and shrink back once the workers hold little."""
    core = native_core()
    if core is None:
        pytest.skip("the C core is not built")
    index, rng = CompactPrefixIndex(core=core), np.random.default_rng(0)
    chains = [rng.integers(2, 1 << 63, 256, dtype=np.uint64) for _ in range(400)]
    for i, chain in enumerate(chains):
        index.apply(stored(f"w{i % 16}", chain))
    held = index.size()
    for round_ in range(2000):  # five times the index over: each new chain in, the oldest out
        new = rng.integers(2, 1 << 63, 256, dtype=np.uint64)
        index.apply_batch(EventBatch.of([stored(f"w{round_ % 16}", new), evicted(f"w{round_ % 16}", chains[0])]))
        chains = chains[1:] + [new]
    after = index.size()
    assert after.blocks == held.blocks == 400 * 256
    assert after.nbytes <= 1.1 * held.nbytes and after.nbytes / after.blocks < 40
    assert after.states < 64
    for i, chain in enumerate(chains[:-4]):
        index.apply(evicted(f"w{(i + 2000) % 16}", chain))
    assert len(index) == 4 * 256 and index.size().nbytes < held.nbytes / 10


def test_predictions_are_capped_even_when_confirmed(core):
    """Predictions kept until their expiry, confirmed by events or not, stay within the cap."""
    index = CompactPrefixIndex(max_predicted=100, core=core)
    for i in range(1000):
        ids = np.arange(1000 + 4 * i, 1004 + 4 * i, dtype=np.uint64)
        index.predict("w1", ids, expires_at=1e9)
        index.apply(stored("w1", ids))  # confirmed at once
    size = index.size()
    assert size.predicted <= 100 and len(index._predictions) <= 25
    assert size.blocks == 4000, "confirmed blocks stay held when their predictions go"


def test_max_predicted_is_one_knob_with_one_default():
    assert RouterSection().max_predicted == ClusterInfo("c", "m", None, {}, ()).max_predicted == MAX_PREDICTED
    assert CompactPrefixIndex().max_predicted == ClusterView(Pools(), 16, None).prefixes.max_predicted == MAX_PREDICTED
    config = parse_cluster_config({"model": "/m", "pools": {"colocated": {}}, "router": {"max_predicted": 1000}})
    assert config.router.max_predicted == 1000
    assert ClusterView(Pools(), 16, None, max_predicted=1000).prefixes.max_predicted == 1000
    assert "max_predicted" not in {f.name for f in dataclasses.fields(config.router.router_config())}
    with pytest.raises(ValueError, match="max_predicted"):
        RouterSection(max_predicted=-1)
