"""Shared-prefix attention: planning, exactness against plain paged attention, engine tokens."""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from engine.attention.reference import paged_attention
from engine.attention.shared_prefix import SharedSegment, plan_shared_prefixes
from engine.attention.shared_prefix.reference import shared_prefix_decode
from engine.sampling_params import SamplingParams
from tests.engine.conftest import BOTH_SCHEDULINGS, make_engine

pytestmark = BOTH_SCHEDULINGS


def test_plan_finds_nested_segments():
    bs = 4
    tables = [[0, 1, 2, 10], [0, 1, 2, 11, 20], [0, 1, 3, 12], [0, 1, 3, 13], [7, 8]]
    seq_lens = [14, 18, 16, 15, 6]
    plan = plan_shared_prefixes(tables, seq_lens, bs)
    segments = sorted(plan.segments, key=lambda s: (s.start_token, s.blocks))
    assert segments == [SharedSegment((0, 1), 0, (0, 1, 2, 3)), SharedSegment((2,), 8, (0, 1)),
                        SharedSegment((3,), 8, (2, 3))]
    assert plan.suffix_start == [12, 12, 12, 12, 0]
    assert plan_shared_prefixes([[0, 1], [2, 3]], [8, 8], bs) is None


def test_last_block_is_never_shared():
    # Both sequences end inside block 5 (it is being written): only block 4 is shared.
    plan = plan_shared_prefixes([[4, 5], [4, 5]], [6, 6], 4)
    assert [s.blocks for s in plan.segments] == [(4,)]


def random_shared_batch(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    bs, hq, hkv, d = 8, 8, 2, 16
    k_cache = torch.randn(64, bs, hkv, d, generator=g, dtype=dtype)
    v_cache = torch.randn(64, bs, hkv, d, generator=g, dtype=dtype)
    system, fewshot_a, fewshot_b = [0, 1, 2, 3], [4, 5], [6]
    tables = [system + fewshot_a + [10, 11], system + fewshot_a + [12], system + fewshot_b + [13, 14],
              system + fewshot_b + [15], system + [16], [20, 21, 22]]
    seq_lens = [len(t) * bs - int(torch.randint(0, bs, (1,), generator=g)) for t in tables]
    width = max(map(len, tables))
    meta = AttentionMetadata(torch.arange(len(tables) + 1, dtype=torch.int32), torch.tensor(seq_lens).int(),
                             torch.tensor([t + [0] * (width - len(t)) for t in tables]).int(),
                             torch.zeros(0, dtype=torch.long), 1, max(seq_lens), True)
    q = torch.randn(len(tables), hq, d, generator=g, dtype=dtype)
    return q, k_cache, v_cache, meta, plan_shared_prefixes(tables, seq_lens, bs)


def test_shared_prefix_equals_plain_paged_attention():
    for seed in range(5):
        q, k, v, meta, plan = random_shared_batch(seed)
        assert len(plan.segments) >= 3
        torch.testing.assert_close(shared_prefix_decode(q, k, v, meta, plan, 0.25),
                                   paged_attention(q, k, v, meta, 0.25), rtol=1e-5, atol=1e-5)


def test_engine_tokens_identical_with_the_shared_prefix_path(tiny_model):
    g = torch.Generator().manual_seed(0)
    system = torch.randint(3, 500, (50,), generator=g).tolist()
    fewshot = [torch.randint(3, 500, (20,), generator=g).tolist() for _ in range(2)]
    prompts = [system + fewshot[i % 2] + torch.randint(3, 500, (5 + i,), generator=g).tolist() for i in range(8)]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    plain = make_engine(tiny_model).generate(prompts, params)
    engine = make_engine(tiny_model, prefix_caching=True)
    engine.generate(prompts[:1], params)  # cache the system prompt so the others share its blocks
    shared = engine.generate(prompts, params)
    assert [r.token_ids for r in shared] == [r.token_ids for r in plain]
    assert engine.runner.shared_prefix_steps > 0
