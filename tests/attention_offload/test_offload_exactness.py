"""Greedy tokens of a model worker whose attention runs on an attention worker (gloo, fp32, CPU)
equal the single-process engine's, for m = 1, 2, 3 micro-batches: continuous batching with
requests joining and leaving, chunked prefill, preemption, prefix reuse."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.attention_offload.local_offload import LocalOffload, engine_config

pytestmark = pytest.mark.redis

MICRO_BATCHES = [1, 2, 3]


def prompts_of(n: int, seed: int, low: int = 1, high: int = 70) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def run_joining(engine: LLMEngine, prompts, params, every: int = 3) -> list[list[int]]:
    """A new request joins every ``every`` steps; tokens per request in order of joining."""
    got: dict[str, list[int]] = {}
    pending = list(zip(prompts, params))
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % every == 0:
            p, ps = pending.pop(0)
            got[engine.add_request(None, p, ps)] = []
        for delta in engine.step():
            got[delta.request_id] += delta.new_token_ids
        step += 1
    return list(got.values())


@pytest.fixture
def offload(redis_url):
    made = []

    def make(config, micro_batches):
        made.append(LocalOffload(redis_url, config, micro_batches))
        return made[-1]
    yield make
    for o in made:
        o.close()
        assert o.ended == ["stopped"]


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_continuous_batching_with_joins_and_leaves(tiny_model, offload, m):
    prompts = prompts_of(10, seed=2)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in [3, 25, 7, 1, 18, 30, 2, 11, 20, 5]]
    config = engine_config(tiny_model, max_num_seqs=4)
    expected = run_joining(LLMEngine(config), prompts, params)
    o = offload(config, m)
    assert run_joining(o.engine, prompts, params) == expected
    assert o.engine.kv.num_free_blocks == o.engine.runner.num_blocks
    assert max(o.runner.steps_by_micro_batches) == m  # batches of >= m sequences were split m ways
    assert o.worker.stats.layer_calls == sum(n * k for k, n in o.runner.steps_by_micro_batches.items()) * 2
    deadline = time.monotonic() + 10
    while len(o.worker.mirror) and time.monotonic() < deadline:
        time.sleep(0.01)  # the reset the idle engine sent is on its way
    assert len(o.worker.mirror) == 0  # no table outlives its request


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_chunked_prefill(tiny_model, offload, m):
    prompts = prompts_of(5, seed=4, low=20, high=90)
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model, max_num_batched_tokens=7)
    expected = [r.token_ids for r in LLMEngine(config).generate(prompts, params)]
    o = offload(config, m)
    assert [r.token_ids for r in o.engine.generate(prompts, params)] == expected
    assert o.worker.stats.steps > 20  # chunks of 7 tokens: many mixed steps


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_preemption_under_a_tiny_block_budget(tiny_model, offload, m):
    prompts = prompts_of(6, seed=3)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model, num_blocks=16, block_size=8)
    reference = LLMEngine(config)
    expected = [r.token_ids for r in reference.generate(prompts, params)]
    assert reference.num_preemptions > 0
    o = offload(config, m)
    assert [r.token_ids for r in o.engine.generate(prompts, params)] == expected
    assert o.engine.num_preemptions == reference.num_preemptions
    assert o.engine.kv.num_free_blocks == 16


@pytest.mark.parametrize("m", MICRO_BATCHES)
def test_prefix_reuse(tiny_model, offload, m):
    shared = prompts_of(1, seed=7, low=40, high=41)[0]
    prompts = [shared + tail for tail in prompts_of(6, seed=8, low=1, high=20)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model, prefix_caching=True, block_size=8)
    reference = LLMEngine(config)
    expected = [r.token_ids for r in reference.generate(prompts[:2], params)]
    expected += [r.token_ids for r in reference.generate(prompts[2:], params)]
    o = offload(config, m)
    got = [r.token_ids for r in o.engine.generate(prompts[:2], params)]
    got += [r.token_ids for r in o.engine.generate(prompts[2:], params)]
    assert got == expected
    assert o.engine.kv.prefix_hits == reference.kv.prefix_hits > 0


def test_seeded_sampling_matches(tiny_model, offload):
    """The sampler stays on the model worker: seeded draws are the engine's."""
    prompts = prompts_of(4, seed=5)
    params = [SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, seed=i, ignore_eos=True) for i in range(4)]
    config = engine_config(tiny_model, num_blocks=12, block_size=8)
    expected = [r.token_ids for r in LLMEngine(config).generate(prompts, params)]
    o = offload(config, 2)
    assert [r.token_ids for r in o.engine.generate(prompts, params)] == expected
    other = [dataclasses.replace(p, seed=p.seed + 10) for p in params]
    assert [r.token_ids for r in o.engine.generate(prompts, other)] != expected


def test_a_wrong_attention_changes_the_tokens(tiny_model, offload):
    """The comparison can fail: attention with another scale on the attention worker gives
    other tokens."""
    prompts = prompts_of(4, seed=9)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model)
    expected = [r.token_ids for r in LLMEngine(config).generate(prompts, params)]
    o = offload(config, 2)
    o.worker.scale *= 3
    assert [r.token_ids for r in o.engine.generate(prompts, params)] != expected
