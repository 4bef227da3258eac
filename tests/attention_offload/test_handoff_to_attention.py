"""A prefill worker hands a prompt's KV straight to the attention worker (kvstore's handoff, the
attention worker as the peer), into the blocks the model worker reserved; the model worker then
decodes: tokens equal one engine's."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from kvstore.handoff import KVHandoff
from kvstore.pair_groups import PairGroups
from tests.attention_offload.local_offload import LocalOffload, engine_config, transport
from tests.attention_offload.test_offload_exactness import prompts_of

pytestmark = pytest.mark.redis


def test_prefill_hands_kv_to_the_attention_worker(tiny_model, redis_url):
    head = prompts_of(1, seed=21, low=24, high=25)[0]
    prompts = [head + tail for tail in prompts_of(3, seed=22, low=3, high=30)]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model, prefix_caching=True, block_size=8)
    expected = [r.token_ids for r in LLMEngine(config).generate(prompts, params)]
    prefill = LLMEngine(config)
    o = LocalOffload(redis_url, config, 2)
    sender = KVHandoff(PairGroups("prefill-0", o.redis, o.keys, transport(), "cpu"), transport())
    receiver = KVHandoff(PairGroups("attention-0", o.redis, o.keys, transport(), "cpu"), transport())
    got, cached = {}, []
    try:
        with ThreadPoolExecutor(2) as pool:
            for i, prompt in enumerate(prompts):
                rid = f"r{i}"
                first = prefill.generate([prompt], dataclasses.replace(params, max_tokens=1))[0].token_ids
                prefill.add_request(rid, prompt, dataclasses.replace(params, max_tokens=1), hold_kv=True)
                while prefill.has_unfinished():
                    prefill.step()
                held = prefill.held_kv(rid)
                reservation = o.engine.add_prefilled(rid, prompt, first, params)
                cached.append(reservation.num_cached_blocks)
                blocks = held.block_ids[reservation.num_cached_blocks:len(held.block_ids)]
                recv = pool.submit(receiver.recv, o.worker.kv_cache, reservation.block_ids, "prefill-0", rid)
                sender.send(prefill.runner.kv_cache, blocks, "attention-0", rid)
                recv.result(timeout=60)
                prefill.release_kv(rid)
                o.engine.kv_arrived(rid)
                got[rid] = list(first)
                while o.engine.has_unfinished():
                    for delta in o.engine.step():
                        got[delta.request_id] += delta.new_token_ids
        assert list(got.values()) == expected
        assert cached[0] == 0 and cached[1] == cached[2] == 3  # the shared head (3 blocks) cached on the model worker
        assert o.engine.kv.num_free_blocks == config.cache.num_blocks
    finally:
        o.close()
        sender._groups.close_all()
        receiver._groups.close_all()


def test_a_prompt_whose_kv_cannot_come_is_recomputed_by_the_model_worker(tiny_model, redis_url):
    """The recompute mode (a prefill pool on another kind of device than the attention pool):
    the reservation is given back, the model worker computes prompt + first token itself."""
    prompts = prompts_of(3, seed=23, low=10, high=40)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    config = engine_config(tiny_model, prefix_caching=True, block_size=8)
    expected = [r.token_ids for r in LLMEngine(config).generate(prompts, params)]
    o = LocalOffload(redis_url, config, 2)
    try:
        got = {}
        for i, (prompt, want) in enumerate(zip(prompts, expected)):
            rid = f"r{i}"
            o.engine.add_prefilled(rid, prompt, want[:1], params)
            o.engine.kv_not_coming(rid)
            o.engine.kv_arrived(rid)
            got[rid] = want[:1]
        while o.engine.has_unfinished():
            for delta in o.engine.step():
                got[delta.request_id] = got[delta.request_id] + delta.new_token_ids
        assert list(got.values()) == expected
        assert o.engine.kv.prefix_queries == sum(len(p) + 1 for p in prompts)  # one lookup each, at admission
        assert o.engine.kv.num_free_blocks == config.cache.num_blocks
    finally:
        o.close()
