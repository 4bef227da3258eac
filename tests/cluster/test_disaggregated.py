"""2 prefill + 2 decode Ray actors: exact against the engine, streaming, concurrency, clean-up."""

from __future__ import annotations

import dataclasses
import time

import pytest
import ray

from cluster.bringup.local_cluster import Cluster
from engine.sampling_params import InvalidRequestError, SamplingParams
from kvstore.store import KVStore
from tests.cluster.conftest import TWO_BY_TWO, cluster_config, collect, event_loop, gather
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def cluster(tiny_model, request):
    """The 2 x 2 cluster, its engines stepping in lockstep or with overlapped scheduling (the
    default on CUDA): handoffs, cancels and frees must not depend on it."""
    pools = {name: {**pool, "engine": {"async_scheduling": request.param}} for name, pool in TWO_BY_TWO.items()}
    c = Cluster(cluster_config(tiny_model, **pools))
    c.start()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def loop(cluster):
    """One event loop per cluster: its streams end before that cluster shuts down."""
    with event_loop() as loop:
        yield loop


def prompts(n: int) -> list[list[int]]:
    return [[0] + [(7 * i + j) % 500 + 3 for j in range(5 + (i * 13) % 60)] for i in range(n)]


def wait_idle(cluster, timeout: float = 30.0) -> list:
    """Loads of every replica once no blocks are in use (or the last loads seen at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        loads = ray.get([r.actor.load.remote() for r in cluster.pools.all])
        if all(l.free_blocks == l.total_blocks and l.held_handoffs == 0 for l in loads):
            return loads
        if time.monotonic() > deadline:
            return loads
        time.sleep(0.1)


def assert_clean(cluster) -> None:
    loads = wait_idle(cluster)
    for load in loads:
        assert load.free_blocks == load.total_blocks, load
        assert load.held_handoffs == 0 and load.running == 0 and load.waiting == 0, load
    store = KVStore.connect(cluster.kvstore)
    try:
        assert store.leases.pinned_blocks() == 0
    finally:
        store.close()


def test_greedy_output_identical_to_single_engine(loop, cluster, tiny_model):
    ps = prompts(6)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    expected = make_engine(tiny_model).generate(ps, params)
    got = loop.run_until_complete(gather(*(collect(cluster.dispatcher, p, params) for p in ps)))
    for exp, deltas in zip(expected, got):
        assert [t for d in deltas for t in d.new_token_ids] == exp.token_ids
        assert "".join(d.new_text for d in deltas) == exp.text
        assert deltas[-1].finished and deltas[-1].finish_reason == exp.finish_reason
    assert ray.get([r.actor.device_uuid.remote() for r in cluster.pools.all]) == [None] * 4  # no GPU
    assert_clean(cluster)


def test_seeded_sampling_and_stop_strings_match_single_engine(loop, cluster, tiny_model):
    p = prompts(1)[0]
    engine = make_engine(tiny_model)
    sampled = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=5, ignore_eos=True)
    expected = engine.generate([p], sampled)[0]
    others = engine.generate([p, p], [dataclasses.replace(sampled, seed=6),
                                      dataclasses.replace(sampled, temperature=0)])
    assert all(o.token_ids != expected.token_ids for o in others)  # a cluster losing seed or temperature would fail
    deltas = loop.run_until_complete(collect(cluster.dispatcher, p, sampled))
    assert [t for d in deltas for t in d.new_token_ids] == expected.token_ids
    stop = expected.text[4:7]
    stopped = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=5, ignore_eos=True, stop=(stop,))
    exp_stop = engine.generate([p], stopped)[0]
    deltas = loop.run_until_complete(collect(cluster.dispatcher, p, stopped))
    assert "".join(d.new_text for d in deltas) == exp_stop.text
    assert [t for d in deltas for t in d.new_token_ids] == exp_stop.token_ids
    assert deltas[-1].finish_reason.value == "stop"
    assert_clean(cluster)


def test_sixty_four_concurrent_requests_stream_in_order(loop, cluster, tiny_model):
    ps = prompts(64)
    params = [SamplingParams(max_tokens=4 + i % 9, temperature=0, ignore_eos=True) for i in range(64)]
    expected = make_engine(tiny_model).generate(ps, params)
    got = loop.run_until_complete(gather(*(collect(cluster.dispatcher, p, q) for p, q in zip(ps, params))))
    for exp, deltas, q in zip(expected, got, params):
        assert [t for d in deltas for t in d.new_token_ids] == exp.token_ids
        assert len(deltas) == q.max_tokens and all(len(d.new_token_ids) == 1 for d in deltas)
        assert [d.finished for d in deltas] == [False] * (q.max_tokens - 1) + [True]
    loads = wait_idle(cluster)
    assert all(l.handoff_bytes > 0 for l in loads), "every replica took part in handoffs"
    assert_clean(cluster)


def test_cancel_mid_stream_frees_kv(loop, cluster):
    params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def cancel_after(n: int):
        stream = cluster.dispatcher.generate(None, prompts(1)[0], params)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == n:
                break
        await stream.aclose()
        return seen
    assert loop.run_until_complete(cancel_after(3)) == 3
    assert loop.run_until_complete(cancel_after(1)) == 1  # cancelled right after the prefill's token
    assert_clean(cluster)


@pytest.mark.parametrize("prompt, params, message", [
    ([], SamplingParams(), "prompt is empty"),
    ([10**7], SamplingParams(), "outside the vocabulary"),
    ([1] * 5000, SamplingParams(), "max_model_len"),
])
def test_bad_requests_are_refused_and_cluster_keeps_serving(loop, cluster, prompt, params, message):
    with pytest.raises(InvalidRequestError, match=message):
        loop.run_until_complete(collect(cluster.dispatcher, prompt, params))
    greedy = SamplingParams(max_tokens=3, temperature=0)
    deltas = loop.run_until_complete(collect(cluster.dispatcher, [0, 5, 6], greedy))
    assert deltas[-1].finished
