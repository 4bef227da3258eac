"""The compact prefix index gives the reference's answers (cluster/index/prefix_index.py), event by
event and batch by batch, on both cores (C and numpy); the numpy hash table behaves as a dict."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cluster.index import compact_index
from cluster.index.block_table import BlockTable, distinct_rounds, table_ids
from cluster.index.compact_index import CompactPrefixIndex
from cluster.index.prefix_core import NumpyCore, native_core
from cluster.index.prefix_index import ROOT_ID, PrefixIndex
from kvstore.keys import Tier
from kvstore.kv_events import EventBatch, EventKind, KVEvent

CORES = [NumpyCore] + ([native_core()] if native_core() else [])


@pytest.fixture(params=CORES, ids=lambda c: "numpy" if c is NumpyCore else "c")
def core(request):
    return request.param


def test_table_is_a_dict():
    rng = np.random.default_rng(0)
    table, ref = BlockTable(16), {}
    pool = rng.integers(0, 1 << 64, 5000, dtype=np.uint64)
    pool = table_ids(pool)
    for _ in range(60):
        keys = np.unique(rng.choice(pool, rng.integers(1, 400)))
        new = rng.integers(0, 4, len(keys)).astype(np.uint32)  # 0 deletes
        table.update(keys, lambda old, new=new: new)
        for k, v in zip(keys.tolist(), new.tolist()):
            if v:
                ref[k] = v
            else:
                ref.pop(k, None)
        assert len(table) == len(ref)
        probe = rng.choice(pool, 300)
        assert table.get(probe).tolist() == [ref.get(k, 0) for k in probe.tolist()]
    remap = np.array([0, 3, 0, 1], np.uint32)  # 2 -> deleted
    table.remap(remap)
    ref = {k: int(remap[v]) for k, v in ref.items() if remap[v]}
    keys, vals = table.items()
    assert dict(zip(keys.tolist(), vals.tolist())) == ref


def test_table_keeps_finding_keys_past_full_buckets():
    table = BlockTable(64)  # 8 buckets of 8
    keys = np.arange(1, 41, dtype=np.uint64) * 8  # all in bucket 0: they spill over 5 buckets
    table.update(keys, lambda old: np.arange(1, 41, dtype=np.uint32))
    table.update(keys[:20:2], lambda old: np.zeros(len(old), np.uint32))  # tombstones in full buckets
    assert table.get(keys).tolist() == [0 if i < 20 and i % 2 == 0 else i + 1 for i in range(40)]
    table.update(keys[:4], lambda old: np.full(len(old), 7, np.uint32))
    assert table.get(keys[:6]).tolist() == [7, 7, 7, 7, 0, 6] and len(table) == 32


def test_rounds_apply_repeated_keys_in_order():
    keys = np.array([5, 6, 5, 7, 5, 6], np.uint64)
    assert [r.tolist() for r in distinct_rounds(keys)] == [[0, 1, 3], [2, 5], [4]]


# -- the reference, compared ------------------------------------------------------------


class Fleet:
    """Random chains with shared prefixes, and the events of workers caching and evicting them."""

    def __init__(self, seed: int, workers: int = 6, groups: int = 5):
        self.rng = random.Random(seed)
        self.workers = [f"w{i}" for i in range(workers)] + ["redis-host"]
        self.prefixes = [[self._id() for _ in range(self.rng.randint(1, 6))] for _ in range(groups)]
        self.held: dict[str, set[int]] = {w: set() for w in self.workers}

    def _id(self) -> int:
        return self.rng.getrandbits(64)

    def chain(self) -> list[int]:
        prefix = self.rng.choice(self.prefixes)[:self.rng.randint(0, 6)]
        return prefix + [self._id() for _ in range(self.rng.randint(0, 5))]

    def event(self) -> KVEvent:
        worker, roll = self.rng.choice(self.workers), self.rng.random()
        if roll < 0.55:
            chain = self.chain()
            lo = self.rng.choice([0, 0, 0, self.rng.randint(0, len(chain))])  # sometimes the parent's event is lost
            parents = [ROOT_ID] + chain[:-1]
            self.held[worker].update(chain[lo:])
            return KVEvent(worker, EventKind.STORED, Tier.GPU, tuple(chain[lo:]), tuple(parents[lo:]))
        if roll < 0.95:
            known = sorted(self.held[worker]) + [self._id()]
            gone = self.rng.sample(known, self.rng.randint(0, len(known)))
            self.held[worker].difference_update(gone)
            return KVEvent(worker, EventKind.EVICTED, hashes=tuple(gone))
        self.held[worker].clear()
        return KVEvent(worker, EventKind.CLEARED)

    def queries(self, n: int = 12) -> list[list[int]]:
        return [self.chain() for _ in range(n)] + [[self._id()]] + [[]]


def same_answers(ref: PrefixIndex, new: CompactPrefixIndex, queries) -> None:
    for q in queries:
        assert new.matched_blocks(q) == ref.matched_blocks(q), q
        counts = new.matched_counts(np.array(q, np.uint64))
        assert {new.names[i]: int(c) for i, c in enumerate(counts) if c} == ref.matched_blocks(q)


@pytest.mark.parametrize("seed", range(8))
def test_same_answers_as_the_reference(seed, core):
    fleet, now = Fleet(seed), 0.0
    ref, new = PrefixIndex(), CompactPrefixIndex(core=core)
    for _ in range(150):
        roll = fleet.rng.random()
        if roll < 0.6:  # a batch of events, applied at once (the reference: one by one, over the wire)
            events = [fleet.event() for _ in range(fleet.rng.randint(1, 8))]
            for e in events:
                ref.apply(KVEvent.decode(e.encode()))
            new.apply_batch(EventBatch.decode([e.encode() for e in events]))
        elif roll < 0.85:
            worker, chain = fleet.rng.choice(fleet.workers), fleet.chain()
            expiry = now + fleet.rng.choice([1.0, 2.0, 5.0])
            ref.predict(worker, chain, expiry)
            new.predict(worker, chain, expiry)
        else:
            now += fleet.rng.random() * 2
            ref.expire(now)
            new.expire(now)
        same_answers(ref, new, fleet.queries())
    assert len(new) == sum(1 for n in ref.nodes.values() if n.holders)


def test_reference_scenarios(core):
    """The reference's own tests (test_prefix_index.py), on the compact index."""
    index = CompactPrefixIndex(core=core)
    a = [11, 12, 13, 14]
    b = [11, 12, 23, 24]
    index.apply(KVEvent("w1", EventKind.STORED, hashes=tuple(a), parents=(0, 11, 12, 13)))
    index.apply(KVEvent("w2", EventKind.STORED, hashes=tuple(b[:3]), parents=(0, 11, 12)))
    assert index.matched_blocks(a) == {"w1": 4, "w2": 2}
    index.apply(KVEvent("w1", EventKind.EVICTED, hashes=(12,)))
    assert index.matched_blocks(a) == {"w1": 1, "w2": 2}
    index.apply(KVEvent("w2", EventKind.CLEARED))
    assert index.matched_blocks(a) == {"w1": 1}
    index.apply(KVEvent("w1", EventKind.EVICTED, hashes=tuple(a)))
    assert len(index) == 0 and index.matched_blocks(a) == {}
    index.predict("w1", a, expires_at=10.0)
    index.apply(KVEvent("w1", EventKind.STORED, hashes=(11, 12), parents=(0, 11)))
    index.expire(now=10.0)
    assert index.matched_blocks(a) == {"w1": 2} and index.size().predicted == 0


def test_predictions_are_capped(core):
    index = CompactPrefixIndex(max_predicted=10, core=core)
    for i in range(5):
        index.predict("w1", [100 * i + j for j in range(10, 14)], expires_at=100.0)
    assert index.size().predicted <= 10
    assert index.matched_blocks([410, 411]) == {"w1": 2}, "the newest predictions are kept"
    assert index.matched_blocks([10, 11]) == {}, "the oldest went first"


def test_holder_states_are_compacted(core, monkeypatch):
    monkeypatch.setattr(compact_index, "STATE_SLACK", 64)
    index = CompactPrefixIndex(core=core)
    for i in range(600):  # each block held by a different pair of workers: many states, most short-lived
        w = f"w{i % 97}"
        index.apply(KVEvent(w, EventKind.STORED, hashes=(i + 2,), parents=(0,)))
        index.apply(KVEvent(f"x{i % 89}", EventKind.STORED, hashes=(i + 2,), parents=(0,)))
        if i >= 10:
            index.apply(KVEvent(f"w{(i - 10) % 97}", EventKind.EVICTED, hashes=(i - 8,)))
            index.apply(KVEvent(f"x{(i - 10) % 89}", EventKind.EVICTED, hashes=(i - 8,)))
    assert len(index) == 10 and index.size().states < 64 + 2 * 40
    assert index.matched_blocks([599 + 2]) == {f"w{599 % 97}": 1, f"x{599 % 89}": 1}
    assert index.matched_blocks([589 + 2]) == {}, "evicted by both"


def test_batches_decode_like_events():
    old_form = [KVEvent("w1", EventKind.STORED, Tier.GPU, (b"a" * 16, b"b" * 16), (b"\0" * 16, b"a" * 16)),
                KVEvent("w2", EventKind.EVICTED, hashes=(b"c" * 16,)), KVEvent("w1", EventKind.CLEARED)]
    import msgpack
    legacy = [msgpack.packb([e.worker_id, e.kind.value, e.tier.value, list(e.hashes), list(e.parents)],
                            use_bin_type=True) for e in old_form]
    new = [e.encode() for e in old_form]
    for messages in (legacy, new):
        batch = EventBatch.decode(messages + [msgpack.packb(["w3", "segment", "gpu", b"", b""])])
        assert [(w, k) for w, k, _ in batch.events] == [("w1", EventKind.STORED), ("w2", EventKind.EVICTED),
                                                       ("w1", EventKind.CLEARED)]
        decoded = [KVEvent.decode(m) for m in messages]
        assert batch.ids.tolist() == [h for e in decoded for h in e.hashes]
        assert decoded[0].parents == (0, decoded[0].hashes[0])
    assert len(new[0]) < len(legacy[0]) / 2, "packed ids, and a chain's parents implied"


@pytest.mark.skipif(native_core() is None, reason="the C core was not built (pip install -e .)")
def test_c_core_at_scale_matches_the_numpy_core():
    """Hundreds of workers (bitsets of several words), tables growing and shrinking, chains
    sharing prefixes: both cores answer alike."""
    rng = np.random.default_rng(7)
    cores = [CompactPrefixIndex(core=NumpyCore), CompactPrefixIndex(core=native_core())]
    prefixes = [rng.integers(2, 1 << 63, 40, dtype=np.uint64) for _ in range(8)]
    chains = [np.concatenate([prefixes[i % 8][:rng.integers(0, 41)], rng.integers(2, 1 << 63, 20, dtype=np.uint64)])
              for i in range(400)]
    events = [KVEvent(f"w{(i * 37) % 300}", EventKind.STORED, hashes=tuple(c.tolist()),
                      parents=(0, *c[:-1].tolist())) for i, c in enumerate(chains)]
    for index in cores:
        index.apply_batch(EventBatch.of(events))
        index.predict("w299", chains[5], expires_at=1.0)
    queries = chains[::7] + [np.concatenate([p[:30], [12345]]) for p in prefixes]
    answers = [[index.matched_blocks(q) for q in queries] for index in cores]
    assert answers[0] == answers[1] and sum(len(a) > 2 for a in answers[0]) > 3
    gone = [KVEvent(e.worker_id, EventKind.EVICTED, hashes=e.hashes) for e in events[:390]]
    for index in cores:
        index.apply_batch(EventBatch.of(gone))
        index.apply(KVEvent("w299", EventKind.CLEARED))
        index.expire(2.0)
    assert [cores[1].matched_blocks(q) for q in queries] == [cores[0].matched_blocks(q) for q in queries]
    assert len(cores[0]) == len(cores[1]) < 10 * 60
    held = [{w: sorted(ids.tolist()) for w, ids in index.held().items()} for index in cores]
    assert held[0] == held[1] and "w299" not in held[0] and len(held[0]) == 10
