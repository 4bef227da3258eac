"""Paged = contiguous; continuous batching = one at a time; preemption and chunking stay exact."""

from __future__ import annotations

import dataclasses

import torch

from engine.attention import AttentionMetadata
from engine.attention.reference import causal_attention, paged_attention
from engine.sampling_params import SamplingParams
from tests.engine.conftest import BOTH_SCHEDULINGS, make_engine

pytestmark = BOTH_SCHEDULINGS

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


def prompts_of(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (int(torch.randint(1, 70, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def one_at_a_time(model, prompts, params=GREEDY) -> list[list[int]]:
    engine = make_engine(model)
    return [engine.generate([p], params)[0].token_ids for p in prompts]


def test_paged_attention_equals_contiguous():
    g = torch.Generator().manual_seed(1)
    block_size, heads, kv_heads, dim = 4, 4, 2, 8
    lens, q_lens = [5, 13, 1, 8], [5, 2, 1, 3]
    k_cache = torch.randn(32, block_size, kv_heads, dim, generator=g)
    v_cache = torch.randn(32, block_size, kv_heads, dim, generator=g)
    perm = torch.randperm(32, generator=g)
    tables = torch.stack([perm[i * 8:(i + 1) * 8] for i in range(4)]).int()
    q = torch.randn(sum(q_lens), heads, dim, generator=g)
    starts = torch.tensor([0] + q_lens).cumsum(0).int()
    meta = AttentionMetadata(starts, torch.tensor(lens).int(), tables, torch.zeros(0, dtype=torch.long),
                             max(q_lens), max(lens), False)
    out = paged_attention(q, k_cache, v_cache, meta, 0.3)
    for i, (n, _ql) in enumerate(zip(lens, q_lens)):
        blocks = tables[i, :(n + block_size - 1) // block_size].long()
        k = k_cache[blocks].reshape(-1, kv_heads, dim)[:n]
        v = v_cache[blocks].reshape(-1, kv_heads, dim)[:n]
        ref = causal_attention(q[starts[i]:starts[i + 1]], k, v, 0.3)
        torch.testing.assert_close(out[starts[i]:starts[i + 1]], ref)


def test_block_size_does_not_change_tokens(tiny_model):
    prompts = prompts_of(4)
    small = make_engine(tiny_model, block_size=4).generate(prompts, GREEDY)
    whole = make_engine(tiny_model, block_size=128).generate(prompts, GREEDY)
    assert [r.token_ids for r in small] == [r.token_ids for r in whole]


def test_continuous_batching_with_joins_and_leaves_equals_one_at_a_time(tiny_model):
    prompts = prompts_of(10, seed=2)
    lengths = [3, 25, 7, 1, 18, 30, 2, 11, 20, 5]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    expected = [one_at_a_time(tiny_model, [p], ps)[0] for p, ps in zip(prompts, params)]
    engine = make_engine(tiny_model, max_num_seqs=4)
    got: dict[str, list[int]] = {}
    pending = list(zip(prompts, params))
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:  # a new request joins every third step
            p, ps = pending.pop(0)
            got[engine.add_request(None, p, ps)] = []
        for delta in engine.step():
            got[delta.request_id] += delta.new_token_ids
        step += 1
    assert list(got.values()) == expected
    assert engine.kv.num_free_blocks == engine.runner.num_blocks


def test_preemption_under_tiny_block_budget_stays_exact(tiny_model):
    prompts = prompts_of(6, seed=3)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    expected = one_at_a_time(tiny_model, prompts, params)
    engine = make_engine(tiny_model, num_blocks=16, block_size=8)
    results = engine.generate(prompts, params)
    assert [r.token_ids for r in results] == expected
    assert engine.num_preemptions > 0
    assert engine.kv.num_free_blocks == 16


def test_chunked_prefill_stays_exact(tiny_model):
    prompts = prompts_of(5, seed=4)
    expected = one_at_a_time(tiny_model, prompts)
    engine = make_engine(tiny_model, max_num_batched_tokens=7)
    assert [r.token_ids for r in engine.generate(prompts, GREEDY)] == expected
    assert engine.kv.num_free_blocks == engine.runner.num_blocks


def test_seeded_sampling_is_reproducible_across_batching_and_preemption(tiny_model):
    prompts = prompts_of(4, seed=5)
    params = [SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=i, ignore_eos=True)
              for i in range(4)]
    alone = [make_engine(tiny_model).generate([p], [ps])[0].token_ids for p, ps in zip(prompts, params)]
    batched = make_engine(tiny_model, num_blocks=12, block_size=8).generate(prompts, params)
    assert [r.token_ids for r in batched] == alone
    # each seed matters, and so does the temperature: an engine ignoring either could not match
    others = make_engine(tiny_model).generate(prompts * 2, [dataclasses.replace(ps, seed=ps.seed + 10) for ps in params]
                                              + [dataclasses.replace(ps, temperature=0) for ps in params])
    assert all(o.token_ids != a for o, a in zip(others, alone * 2))


def test_abort_frees_blocks(tiny_model):
    engine = make_engine(tiny_model)
    rid = engine.add_request(None, prompts_of(1)[0], SamplingParams(max_tokens=50, temperature=0))
    engine.step()
    engine.step()
    assert engine.kv.num_free_blocks < engine.runner.num_blocks
    final = engine.abort_request(rid)
    assert final.finished and final.finish_reason.value == "abort"
    while engine.has_unfinished():  # overlapped: the step still queued writes its blocks; they go after it
        assert engine.step() == []  # nothing more from the aborted request
    assert engine.kv.num_free_blocks == engine.runner.num_blocks
