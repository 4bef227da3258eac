"""Faults: an attention worker that dies takes the KV with it and every request recomputes
(prompt + generated tokens, as after preemption); a model worker that dies ends its session on
the attention worker, which serves the next one. No block is left either way."""

from __future__ import annotations

import pytest

from attention_offload.link import LinkError
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.attention_offload.local_offload import LocalOffload, engine_config
from tests.attention_offload.test_offload_exactness import prompts_of

pytestmark = pytest.mark.redis

PARAMS = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


def shared_prompts() -> list[list[int]]:
    head = prompts_of(1, seed=11, low=33, high=34)[0]
    return [head + tail for tail in prompts_of(5, seed=12, low=1, high=12)]


def run(engine: LLMEngine, prompts, until_tokens: int | None = None, got=None) -> dict[str, list[int]]:
    """Step until every request has ``until_tokens`` tokens (None: until all finish)."""
    if got is None:  # the first prompt alone first, so the others find its blocks cached
        got = {engine.add_request("r0", prompts[0], PARAMS): []}
        for delta in engine.step():
            got[delta.request_id] += delta.new_token_ids
        got.update({engine.add_request(f"r{i}", p, PARAMS): [] for i, p in enumerate(prompts) if i})
    while engine.has_unfinished():
        if until_tokens is not None and min(len(t) for t in got.values()) >= until_tokens:
            break
        for delta in engine.step():
            got[delta.request_id] += delta.new_token_ids
    return got


@pytest.mark.parametrize("m", [1, 2])
def test_attention_worker_death_recomputes_every_request(tiny_model, redis_url, m):
    prompts = shared_prompts()
    config = engine_config(tiny_model, prefix_caching=True, block_size=8)
    expected = run(LLMEngine(config), prompts)
    o = LocalOffload(redis_url, config, m, restartable=True, attention_process=True)
    try:
        got = run(o.engine, prompts, until_tokens=5)
        assert o.engine.kv.prefix_hits > 0  # the shared head was cached: a stale hit would now be garbage
        running = len(o.engine.scheduler.running)
        o.kill_attention()
        got = run(o.engine, prompts, got=got)
        assert got == expected
        assert o.restarts == 1 and o.runner.num_reattached == 1
        assert o.engine.num_preemptions >= running > 0
        assert o.engine.kv.num_free_blocks == config.cache.num_blocks
    finally:
        o.close()
    assert o.next_event("ended") == ("stopped", 0)  # the restarted worker's session, ended cleanly


def test_without_reattach_a_dead_attention_worker_stops_the_engine(tiny_model, redis_url):
    o = LocalOffload(redis_url, engine_config(tiny_model), 2, timeout_s=10.0, attention_process=True)
    try:
        o.engine.add_request("a", prompts_of(1, seed=1)[0], PARAMS)
        o.engine.step()
        o.kill_attention()
        with pytest.raises(LinkError, match="attention link with 'attention-0/up' broke"):
            o.engine.step()
    finally:
        o.close()


def test_model_worker_death_ends_its_session_and_a_new_one_attaches(tiny_model, redis_url):
    prompts = prompts_of(4, seed=13)
    config = engine_config(tiny_model, prefix_caching=True, block_size=8)
    expected = run(LLMEngine(config), prompts)
    o = LocalOffload(redis_url, config, 2, with_engine=False)
    try:
        proc, running = o.model_process(prompts, PARAMS, until_tokens=3)
        assert running == 4 and len(o.worker.mirror) == 4
        proc.kill()  # the model worker dies between two steps
        o.serving.join(timeout=30)
        assert o.ended and o.ended[0] != "stopped" and len(o.worker.mirror) == 0  # its session released
        o.attach_model()  # a new model worker (empty accounting) on the same attention worker and cache
        assert run(o.engine, prompts) == expected
        assert o.engine.kv.num_free_blocks == config.cache.num_blocks
    finally:
        o.close()
    assert o.ended[-1] == "stopped"
