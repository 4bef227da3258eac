"""The fleet router's decision is the dispatcher's rule (pool_handles.pick_prefill over
RequestShape), on both cores, for the same matches and loads."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cluster.fleet_router import FleetRouter
from cluster.index.compact_index import CompactPrefixIndex
from cluster.index.prefix_core import NumpyCore, native_core
from cluster.pool_handles import Replica, RequestShape, pick_prefill
from engine.block_hash import ROOT_HASH, hash_blocks
from kvstore.keys import HOST_WORKER
from kvstore.kv_events import EventKind, KVEvent

CORES = [NumpyCore] + ([native_core()] if native_core() else [])
BLOCK = 4


def stored(worker, hashes):
    return KVEvent(worker, EventKind.STORED, hashes=tuple(hashes), parents=(ROOT_HASH, *hashes[:-1]))


@pytest.mark.parametrize("core", CORES, ids=lambda c: "numpy" if c is NumpyCore else "c")
@pytest.mark.parametrize("seed", range(4))
def test_same_choice_as_the_dispatchers_rule(core, seed):
    rng = random.Random(seed)
    names = [f"p{i}" for i in range(rng.choice([3, 17, 70]))]
    prompts = [[rng.randrange(50) for _ in range(BLOCK * rng.randint(1, 12))] for _ in range(30)]
    index = CompactPrefixIndex(core=core)
    for prompt in prompts:  # prefixes cached here and there, some on the host tier
        hashes = hash_blocks(prompt, BLOCK)
        for worker in rng.sample(names + [HOST_WORKER], rng.randint(0, 3)):
            index.apply(stored(worker, hashes[:rng.randint(1, len(hashes))]))
    router = FleetRouter(names, index, BLOCK, HOST_WORKER, host_pull_weight=rng.choice([0.3, 1.0]))
    for _ in range(60):
        pending = [rng.choice([0, 100, 5000, 40000]) for _ in names]  # balanced or not, with ties
        inflight = [rng.choice([0, 1, 2, 20]) for _ in names]
        replicas = [Replica(n, "prefill", None, inflight=f, pending_tokens=p)
                    for n, p, f in zip(names, pending, inflight)]
        router.loads[:], router.inflight[:] = pending, inflight
        prompt = rng.choice(prompts) + [rng.randrange(50) for _ in range(rng.randint(0, 9))]
        hashes = hash_blocks(prompt, BLOCK)
        shape = RequestShape(len(prompt), BLOCK, index.matched_blocks(hashes), router.host_pull_weight)
        expected = names.index(pick_prefill(replicas, shape).worker_id)
        assert router.route(hashes, len(prompt)) == expected
        assert router.route(np.frombuffer(b"".join(hashes), np.uint64)[::2].copy(), len(prompt)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_segment_credit_is_the_dispatchers_segment_tokens(seed):
    """A segment lookup's credit (tokens a replica need not compute past its prefix) moves the
    choice as RequestShape.segment_tokens moves pick_prefill's, on both cores."""
    rng = np.random.default_rng(seed)
    names = [f"p{i}" for i in range(40)]
    routers = []
    for core in CORES:
        index = CompactPrefixIndex(core=core)
        for i in range(40):
            index.apply(stored(names[i], hash_blocks(list(range(i, i + 64)), BLOCK)[:i % 16 + 1]))
        routers.append(FleetRouter(names, index, BLOCK))
    moved = 0
    for _ in range(200):
        loads, inflight = rng.choice([0.0, 50.0, 400.0], 40), rng.integers(0, 2, 40)
        start = int(rng.integers(0, 40))
        hashes = hash_blocks(list(range(start, start + 64)), BLOCK)
        matched = routers[0].index.matched_blocks(hashes)
        uncached = np.array([max(0, 64 - BLOCK * matched.get(n, 0)) for n in names])
        credit = np.where(rng.random(40) < 0.2, np.floor(uncached * rng.choice([0.25, 0.5, 1.0], 40)), 0.0)
        replicas = [Replica(n, "prefill", None, inflight=int(f), pending_tokens=float(p))
                    for n, p, f in zip(names, loads, inflight)]
        shape = RequestShape(64, BLOCK, matched, 0.5, segment_tokens={n: int(c) for n, c in zip(names, credit) if c})
        expected = names.index(pick_prefill(replicas, shape).worker_id)
        for r in routers:
            r.loads[:], r.inflight[:] = loads, inflight
            assert r.route(hashes, 64, credit) == expected
            assert r.route(hashes, 64, np.zeros(40)) == r.route(hashes, 64)
        moved += expected != routers[0].route(hashes, 64)
    assert moved > 10, "credits moved some choices"
    with pytest.raises(ValueError, match="credit"):
        routers[-1].route(hashes, 64, np.zeros(3))
