"""Prefix caching in the engine: exact tokens, hit counters, eviction under pressure, salts."""

from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams
from tests.engine.conftest import BOTH_SCHEDULINGS, make_engine

pytestmark = BOTH_SCHEDULINGS

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def shared_prefix_prompts(n: int, prefix_len: int = 70, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, 500, (prefix_len,), generator=g).tolist()
    return [prefix + torch.randint(3, 500, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_cached_and_uncached_tokens_identical_and_hits_counted(tiny_model):
    prompts = shared_prefix_prompts(8)
    plain = make_engine(tiny_model).generate(prompts, GREEDY)
    cached_engine = make_engine(tiny_model, prefix_caching=True)
    first = cached_engine.generate(prompts[:1], GREEDY)
    rest = cached_engine.generate(prompts[1:], GREEDY)
    assert [r.token_ids for r in first + rest] == [r.token_ids for r in plain]
    stats = cached_engine.stats()
    assert stats.prefix_cache_hits >= 7 * 64  # four full 16-token blocks of the 70-token prefix, 7 times
    assert all(r.num_cached_tokens >= 64 for r in rest)
    assert cached_engine.kv.num_free_blocks == cached_engine.runner.num_blocks


def test_repeated_prompt_reuses_its_own_output_blocks(tiny_model):
    engine = make_engine(tiny_model, prefix_caching=True)
    prompt = shared_prefix_prompts(1, prefix_len=40)[0]
    a = engine.generate([prompt], GREEDY)[0]
    b = engine.generate([prompt + a.token_ids], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    fresh = make_engine(tiny_model).generate([prompt + a.token_ids], SamplingParams(max_tokens=4, temperature=0,
                                                                                  ignore_eos=True))[0]
    assert b.token_ids == fresh.token_ids
    assert b.num_cached_tokens >= 48


def test_a_follow_up_reuses_the_block_the_last_answer_token_completed(tiny_model):
    """15 prompt tokens: the first output token completes block 0 and the request then stops by
    length, so (overlapped) that block's ids are known only when its step is read back."""
    engine = make_engine(tiny_model, prefix_caching=True)
    prompt, params = list(range(10, 25)), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    follow = engine.generate([prompt + first.token_ids + [7, 8, 9]], params)[0]
    assert follow.num_cached_tokens == 16


def test_eviction_under_memory_pressure_stays_exact(tiny_model):
    prompts = shared_prefix_prompts(6, seed=1) + shared_prefix_prompts(6, seed=2)
    plain = [make_engine(tiny_model).generate([p], GREEDY)[0].token_ids for p in prompts]
    tight = make_engine(tiny_model, prefix_caching=True, num_blocks=20, block_size=8)
    got = [tight.generate([p], GREEDY)[0].token_ids for p in prompts]
    got += [r.token_ids for r in tight.generate(prompts, GREEDY)]
    assert got == plain + plain
    events = tight.kv.pool.drain_events()
    assert events.evicted, "the small pool had to evict cached blocks"
    assert tight.kv.num_free_blocks == 20


def test_salt_isolates_tenants(tiny_model):
    engine = make_engine(tiny_model, prefix_caching=True)
    prompt = shared_prefix_prompts(1)[0]
    results = {}
    for salt in ("tenant-a", "tenant-b", "tenant-a"):
        rid = engine.add_request(None, prompt, GREEDY, cache_salt=salt)
        while engine.has_unfinished():
            for d in engine.step():
                if d.finished and d.request_id == rid:
                    results.setdefault(salt, []).append(d.num_cached_tokens)
    assert results["tenant-b"] == [0], "another tenant's prefix is never reused"
    assert results["tenant-a"][0] == 0 and results["tenant-a"][1] >= 64


def test_admission_prefers_requests_whose_prefix_is_cached(tiny_model):
    engine = make_engine(tiny_model, prefix_caching=True, max_num_seqs=1)
    x, y = shared_prefix_prompts(2, seed=3), shared_prefix_prompts(1, seed=4)
    engine.generate([x[0]], GREEDY)                  # prefix X is now cached
    order = []
    for name, prompt in (("y", y[0]), ("x", x[1])):  # y queued first, x second
        engine.add_request(name, prompt, GREEDY)
    while engine.has_unfinished():
        for d in engine.step():
            if d.request_id not in order:
                order.append(d.request_id)
    assert order == ["x", "y"], "the request with a cached prefix starts first"


def test_admission_does_not_starve_the_head(tiny_model):
    engine = make_engine(tiny_model, prefix_caching=True, max_num_seqs=1)
    x, y = shared_prefix_prompts(2, seed=3), shared_prefix_prompts(1, seed=4)
    engine.generate([x[0]], GREEDY)
    engine.add_request("y", y[0], GREEDY)
    engine.add_request("x", x[1], GREEDY)
    engine.scheduler.waiting[0].arrival_time -= 10   # y has waited past the delay bound
    deltas = engine.step() or engine.step()  # overlapped scheduling returns a step's deltas one call later
    assert deltas[0].request_id == "y"
