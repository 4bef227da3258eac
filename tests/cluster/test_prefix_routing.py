"""Prefix reuse across the cluster: routing to the holder, smaller handoffs, salts, hit counters."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from cluster.pool_handles import Replica, RequestShape, pick_decode, pick_prefill
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]
PARAMS = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
PREFIX = [0] + [(31 * i) % 480 + 11 for i in range(127)]  # 128 tokens: 8 full blocks


def wait_indexed(cluster, prompt, salt=None, timeout=10.0) -> dict[str, int]:
    """Block until the dispatcher's prefix index knows of this prompt's blocks somewhere."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matched = cluster.dispatcher.view.shape(prompt, salt).matched_blocks
        if matched:
            return matched
        time.sleep(0.05)
    return {}


def run_one(loop, cluster, prompt, salt=None):
    deltas = []

    async def go():
        async for d in cluster.dispatcher.generate(None, prompt, PARAMS, salt):
            deltas.append(d)
    loop.run_until_complete(go())
    rid = next(reversed(cluster.dispatcher.timings.entries))
    return deltas, cluster.dispatcher.timings.get(rid)


def test_requests_follow_their_prefix_and_stay_exact(loop, cluster, tiny_model):
    engine = make_engine(tiny_model)
    deltas, first = run_one(loop, cluster, PREFIX + [5, 6, 7])
    assert [t for d in deltas for t in d.new_token_ids] == engine.generate([PREFIX + [5, 6, 7]], PARAMS)[0].token_ids
    matched = wait_indexed(cluster, PREFIX + [1])
    assert matched.get(first.workers["prefill"]) == 8 and matched.get(first.workers["decode"]) == 8
    before = cluster.dispatcher.handoff_bytes
    for tail in ([1], [2, 3], [4] * 9, [8, 9, 10, 11]):
        prompt = PREFIX + tail
        deltas, timing = run_one(loop, cluster, prompt)
        assert timing.workers == first.workers, "the replicas holding the prefix serve it again"
        assert deltas[0].num_cached_tokens >= 128
        assert [t for d in deltas for t in d.new_token_ids] == engine.generate([prompt], PARAMS)[0].token_ids
    per_request = (cluster.dispatcher.handoff_bytes - before) / 4
    block_bytes = 2 * 2 * 16 * 2 * 16 * 4  # layers * K/V * block * kv heads * head dim * fp32
    assert per_request <= 2 * block_bytes, "only the blocks past the cached prefix move"
    loads = ray.get([r.actor.load.remote() for r in cluster.pools.prefill])
    assert sum(l.prefix_cache_hits for l in loads) >= 4 * 128


def test_salts_keep_tenants_apart(loop, cluster):
    prompt = [0] + [(17 * i) % 470 + 20 for i in range(63)]
    deltas, _ = run_one(loop, cluster, prompt + [1], salt="tenant-a")
    assert deltas[0].num_cached_tokens == 0
    assert wait_indexed(cluster, prompt + [2], salt="tenant-a")
    deltas, _ = run_one(loop, cluster, prompt + [2], salt="tenant-b")
    assert deltas[0].num_cached_tokens == 0, "another tenant's cache is invisible"
    deltas, _ = run_one(loop, cluster, prompt + [3], salt="tenant-a")
    assert deltas[0].num_cached_tokens >= 48


def test_a_burst_sharing_a_new_prefix_gathers_on_one_replica(loop, cluster):
    """Requests arriving together, before any KV event for their prefix exists, follow the
    first one (the router predicts where it sent the prefix) instead of scattering."""
    prefix = [0] + [(13 * i) % 450 + 30 for i in range(95)]  # 96 tokens: 6 full blocks
    rids = []

    async def one(tail):
        async for d in cluster.dispatcher.generate(None, prefix + tail, PARAMS):
            rids.append(d.request_id)

    async def burst():
        await asyncio.gather(*(one([i + 1]) for i in range(4)))
    loop.run_until_complete(burst())
    prefills = {cluster.dispatcher.timings.get(r).workers["prefill"] for r in set(rids)}
    assert len(set(rids)) == 4 and len(prefills) == 1


def replica(worker_id: str, pending: int = 0, used_blocks: int = 0) -> Replica:
    from workers.messages import WorkerLoad
    r = Replica(worker_id, "prefill", actor=None, pending_tokens=pending)
    r.load = WorkerLoad(worker_id, "prefill", 0, 0, 10_000 - used_blocks, 10_000, 0, 0, 0, 0, 0)
    return r


def test_picks_weigh_saved_tokens_against_load():
    shape = RequestShape(prompt_tokens=2048, block_size=16, matched_blocks={"a": 120})  # a saves 1920
    assert pick_prefill([replica("a"), replica("b")], shape).worker_id == "a"
    assert pick_prefill([replica("a", pending=1000), replica("b")], shape).worker_id == "a"
    assert pick_prefill([replica("a", pending=10_000), replica("b")], shape).worker_id == "a", "saving > load"
    assert pick_prefill([replica("a", pending=40_000), replica("b")], shape).worker_id == "b", "busy holder"
    assert pick_decode([replica("a", used_blocks=10), replica("b")], shape).worker_id == "a"
    assert pick_decode([replica("a", used_blocks=100), replica("b")], shape).worker_id == "a"
    assert pick_decode([replica("a", used_blocks=500), replica("b")], shape).worker_id == "a"
    assert pick_decode([replica("a", used_blocks=2000), replica("b")], shape).worker_id == "b"
    assert pick_decode([replica("a"), replica("b")], shape, exclude={"a"}).worker_id == "b"
