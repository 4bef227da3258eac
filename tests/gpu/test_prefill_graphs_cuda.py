"""Prefill steps replayed from per-layer CUDA graphs (engine/prefill_graphs.py) against eager steps."""

from __future__ import annotations

import pytest
import torch

from engine.prefill_graphs import PREFILL_GRAPH_BUCKETS
from engine.sampling_params import SamplingParams
from tests.gpu.test_engine_cuda import cuda_engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PARAMS = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=5)


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False


def lengths_prompts(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("lengths", [[300], [100, 150, 90], [150, 30], [700, 5]],
                         ids=["one-320", "three-384", "token-rows", "past-the-buckets"])
def test_prefill_graph_steps_give_the_eager_tokens(tiny_model, lengths):
    """fp32: the same greedy tokens and logprobs (1e-4) with the graphs as without; steps of up to
    256 tokens take the token rows and steps past the largest bucket run eagerly."""
    ps = lengths_prompts(lengths, seed=len(lengths) * 7 + lengths[0])
    graphed = cuda_engine(tiny_model, max_num_batched_tokens=2048, max_num_seqs=16)
    assert graphed.runner.prefill_graphs is not None
    assert set(graphed.runner.prefill_graphs.graphs) == set(PREFILL_GRAPH_BUCKETS)
    eager = cuda_engine(tiny_model, max_num_batched_tokens=2048, max_num_seqs=16, cuda_graphs=False)
    before = graphed.runner.prefill_graphs.steps
    got, want = graphed.generate(ps, PARAMS), eager.generate(ps, PARAMS)
    ran = graphed.runner.prefill_graphs.steps - before
    assert ran == (1 if 256 < sum(lengths) <= max(PREFILL_GRAPH_BUCKETS) else 0)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        for a, b in zip(g.logprobs, w.logprobs):
            assert abs(a.logprob - b.logprob) < 1e-4


def test_padding_rows_write_no_kv_and_buckets_are_bounded_by_the_token_budget(tiny_model):
    """A 300-token prompt runs in the 320 bucket: only its own blocks' slots change; an engine
    whose step budget is 320 tokens captures no bucket above it."""
    engine = cuda_engine(tiny_model, max_num_batched_tokens=320, max_num_seqs=8, num_blocks=256)
    pg = engine.runner.prefill_graphs
    assert sorted(pg.graphs) == [128, 256, 320]
    kv = engine.runner.kv_cache
    kv.fill_(7.0)
    engine.generate(lengths_prompts([300], seed=3), SamplingParams(max_tokens=1, temperature=0))
    assert pg.steps == 1
    changed = (kv != 7.0).any(-1).any(-1).any(0).any(0)  # [blocks, slots]
    assert changed.sum().item() == 300  # the prompt's keys; its one sampled token is not written
    blocks = changed.any(-1).nonzero().flatten().tolist()
    assert len(blocks) == -(-300 // 16)
