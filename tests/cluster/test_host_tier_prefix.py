"""Shared prefixes through the Redis host tier: written through once, pulled by another
replica when the holder is busy; outputs stay exact."""

from __future__ import annotations

import time

import pytest

from engine.sampling_params import SamplingParams
from kvstore.keys import HOST_WORKER
from tests.cluster.test_prefix_routing import run_one
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]
PARAMS = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
PREFIX = [0] + [(13 * i) % 450 + 30 for i in range(63)]  # 4 full blocks


def wait_for(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_busy_holder_makes_another_replica_pull_the_prefix_from_host(loop, cluster, tiny_model):
    engine = make_engine(tiny_model)
    view = cluster.dispatcher.view
    _, first = run_one(loop, cluster, PREFIX + [1])
    holder = first.workers["prefill"]
    assert wait_for(lambda: view.shape(PREFIX + [2], None).matched_blocks.get(holder) == 4)
    deltas, second = run_one(loop, cluster, PREFIX + [2])   # a hit: written through to the host tier
    assert second.workers["prefill"] == holder and deltas[0].num_cached_tokens == 64
    assert wait_for(lambda: view.shape(PREFIX + [3], None).matched_blocks.get(HOST_WORKER) == 4)
    busy = next(r for r in cluster.pools.prefill if r.worker_id == holder)
    busy.pending_tokens += 10**6
    try:
        prompt = PREFIX + [3, 4, 5]
        deltas, third = run_one(loop, cluster, prompt)
    finally:
        busy.pending_tokens -= 10**6
    assert third.workers["prefill"] != holder
    assert deltas[0].num_cached_tokens == 64, "the other replica pulled the prefix instead of computing it"
    assert [t for d in deltas for t in d.new_token_ids] == engine.generate([prompt], PARAMS)[0].token_ids
