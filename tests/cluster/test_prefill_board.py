"""The dispatcher's prefill choice (ClusterView.pick_prefill over the pool's board: FleetRouter.pick,
C or numpy) is pool_handles.pick_prefill over pool_handles.usable, for the same shapes and loads;
a colocated pool's (pick_colocated: held KV in the load) likewise."""

from __future__ import annotations

import dataclasses
import random

import pytest

import cluster.index.compact_index
from cluster.cluster_view import ClusterView, NoReplicaError
from cluster.index.prefix_core import NumpyCore, native_core
from cluster.pool_handles import Pools, Replica, pick_colocated, pick_prefill, usable
from engine.block_hash import ROOT_HASH, hash_blocks
from kvstore.keys import HOST_WORKER
from kvstore.kv_events import EventKind, KVEvent
from router.backend import HealthState
from workers.messages import WorkerLoad

CORES = [NumpyCore] + ([native_core()] if native_core() else [])
BLOCK = 4


def stored(worker, hashes):
    return KVEvent(worker, EventKind.STORED, hashes=tuple(hashes), parents=(ROOT_HASH, *hashes[:-1]))


@pytest.fixture(params=CORES, ids=lambda c: "numpy" if c is NumpyCore else "c")
def core(request, monkeypatch):
    monkeypatch.setattr(cluster.index.compact_index, "best_core", lambda: request.param)
    return request.param


def test_replicas_write_their_loads_and_states_on_the_board(core):
    replicas = [Replica(f"p{i}", "prefill", None, pending_tokens=10 * i) for i in range(3)]
    view = ClusterView(Pools(prefill=replicas), BLOCK, None)
    board = view._board(replicas, None)
    assert type(view.prefixes.core) is core
    assert board.router.loads.tolist() == [0, 10, 20]
    replicas[1].inflight += 2
    replicas[1].pending_tokens += 5
    replicas[2].mark_down("gone")
    replicas[0].state = HealthState.DEGRADED
    assert board.router.inflight.tolist() == [0, 2, 0] and board.router.loads.tolist() == [0, 15, 20]
    assert board.states.tolist() == [1, 0, 2]
    replicas[2].answered(WorkerLoad("p2", "prefill", 0, 0, 10, 10, 0, 0, 0, 0, 0), 0.0)
    assert board.states.tolist() == [1, 0, 0]
    assert view._board(replicas, None) is board
    other = ClusterView(Pools(prefill=replicas), BLOCK, None)  # takes the replicas: the first view re-attaches
    assert other._board(replicas, None) is not board and view._board(replicas, None) is not board


@pytest.mark.parametrize("pool", ["prefill", "colocated"])
@pytest.mark.parametrize("seed", range(4))
def test_same_choice_as_the_python_rule(core, pool, seed):
    rng = random.Random(seed)
    names = [f"p{i}" for i in range(rng.choice([2, 17, 70]))]
    replicas = [Replica(n, pool, None) for n in names]
    pools = Pools(**{pool: replicas})
    view = ClusterView(pools, BLOCK, None, host_pull_weight=rng.choice([0.3, 1.0]))
    rule, choose = (pick_prefill, view.pick_prefill) if pool == "prefill" else (pick_colocated, view.pick_colocated)
    prompts = [[rng.randrange(50) for _ in range(BLOCK * rng.randint(1, 12))] for _ in range(30)]
    for prompt in prompts:  # prefixes cached here and there, some on the host tier, some on a decode worker
        hashes = hash_blocks(prompt, BLOCK)
        for worker in rng.sample(names + [HOST_WORKER, "d0"], rng.randint(0, 3)):
            view.prefixes.apply(stored(worker, hashes[:rng.randint(1, len(hashes))]))
    states = [HealthState.READY] * 6 + [HealthState.DEGRADED, HealthState.DOWN]
    moved = none_up = 0
    for _ in range(150):
        balanced = rng.random() < 0.5
        for r in replicas:  # balanced or not, with ties; now and then degraded or down
            r.pending_tokens = rng.choice([0, 100, 5000] if balanced else [0, 100, 5000, 40000])
            r.inflight = rng.choice([0, 1, 2] if balanced else [0, 1, 2, 20])
            if pool == "colocated":  # the KV it holds: its last report and its claims since
                total = 4096
                r.answered(WorkerLoad(r.worker_id, pool, 0, 0, total - rng.choice([0, 10, 500, 3000]), total,
                                      0, 0, 0, 0, 0), 0.0)
                for _ in range(rng.randint(0, 2)):
                    r.claim(rng.choice([1, 17, 900]))
            r.state = rng.choice(states) if rng.random() < 0.5 else HealthState.READY
        if rng.random() < 0.1:  # none ready, or none up
            down = rng.random() < 0.5
            for r in replicas:
                r.state = HealthState.DOWN if down else rng.choice([HealthState.DOWN, HealthState.DEGRADED])
        exclude = set(rng.sample(names, rng.randint(0, min(2, len(names) - 1)))) if rng.random() < 0.3 else set()
        prompt = rng.choice(prompts) + [rng.randrange(50) for _ in range(rng.randint(0, 9))]
        shape = view.shape(prompt, None)
        if rng.random() < 0.4:  # segment credits up to a replica's uncached tokens
            credits = {n: rng.randint(0, shape.uncached(n)) for n in rng.sample(names, rng.randint(1, len(names)))}
            shape = dataclasses.replace(shape, segment_tokens=credits)
            moved += rule(replicas, shape) is not rule(replicas, dataclasses.replace(shape, segment_tokens={}))
        options = usable(replicas, exclude)
        if not options:
            none_up += 1
            with pytest.raises(NoReplicaError, match=f"no {pool} replica is up"):
                choose(replicas, shape, exclude)
            continue
        assert choose(replicas, shape, exclude) is rule(options, shape)
    assert view._boards[pool].replicas is replicas, "the board made the choices"
    assert none_up > 0 and (moved > 0 or len(names) == 2), (moved, none_up)
