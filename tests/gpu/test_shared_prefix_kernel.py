"""The shared-prefix (Hydragen) Triton path on CUDA against both torch references, and in the engine.

Random inputs from a generator seeded by the test's id (the same on every run; the seed is
printed with a failing test's report): prefix trees with a system prompt shared by all,
few-shot nodes shared by subsets, sequences sharing nothing mixed in, shuffled block ids and
NaN in every cache slot a kernel must not read. Outputs are compared per (sequence, head), in
float64, with ``shared_prefix.reference`` (the decomposition) and with plain
``reference.paged_attention`` (tests/attention_checks.py); then the suffix decode and segment kernel run again into
NaN-filled partials, which must all be written, and merge to the same bits. The merge kernel
is checked alone against a float64 merge (empty partials holding NaN must not be read).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from benchmarks.paged_batches import BatchSpec
from benchmarks.shared_prefix_batches import PrefixTree, random_shared_batch
from engine.attention.shared_prefix.triton_backend import prepare, segment_layout
from engine.attention.shared_prefix.triton_kernel import SharedPrefixConfig
from engine.attention.triton_backend import TritonAttention, multiprocessors
from engine.attention.triton_decode import DecodeConfig
from engine.attention.triton_merge import merge_partials
from engine.sampling_params import SamplingParams
from tests.attention_checks import (
    assert_matches_reference,
    assert_rows_close,
    merge_reference,
    nested_tree,
    random_partials,
    seeded_rng,
    shared_reference_output,
    tolerance,
)
from tests.engine.conftest import make_engine


@pytest.fixture
def rng(request) -> random.Random:
    return seeded_rng(request)


def check(tree: PrefixTree, spec: BatchSpec, seed: int, config: SharedPrefixConfig = SharedPrefixConfig()) -> None:
    batch = random_shared_batch(tree, spec, "cuda", seed)
    plan = batch.meta.shared
    assert plan is not None, f"no sharing planned (seed {seed})"
    out = TritonAttention(shared=config).forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    torch.cuda.synchronize()
    assert out.is_contiguous()
    where = f"(seed {seed}, {len(plan.segments)} segments, {config})"
    assert_matches_reference(out, batch, f"paged reference {where}")
    assert_matches_reference(out, batch, f"shared_prefix_reference {where}", ref=shared_reference_output(batch))
    assert torch.equal(rerun_into_nan(batch, config), out), f"partials not all written, or not deterministic {where}"


def rerun_into_nan(batch, config: SharedPrefixConfig) -> torch.Tensor:
    """The step's launches again (serially) into partials that are NaN except the slots the layout leaves
    neutral: no NaN may remain; returns the merged output."""
    decode, sms = DecodeConfig(), multiprocessors(batch.q.device)
    launch = prepare(batch.q, batch.k_cache, batch.meta, sms, config, decode)
    step = launch.step
    work = segment_layout(batch.q, batch.k_cache, batch.meta.shared, launch.suffix_splits, launch.tiles, sms, config)
    rows, slots = (torch.tensor(x, dtype=torch.long, device=batch.q.device) for x in work.unused_slots())
    step.part_out.fill_(float("nan"))
    step.part_lse.fill_(float("nan"))
    step.part_out[rows, :, slots] = 0.0
    step.part_lse[rows, :, slots] = float("-inf")
    launch.suffix(batch.q, batch.k_cache, batch.v_cache, batch.scale, decode)
    launch.segments(batch.q, batch.k_cache, batch.v_cache, batch.scale, config)
    assert not step.part_out.isnan().any() and not step.part_lse.isnan().any(), "a partial slot was never written"
    out = torch.empty_like(batch.q)
    launch.merge(out)
    return out


CASES = [(torch.bfloat16, 32, 8, 128, 16), (torch.float16, 32, 8, 128, 16), (torch.float32, 32, 8, 128, 16),
         (torch.bfloat16, 28, 4, 128, 32), (torch.float16, 16, 1, 256, 16), (torch.float32, 8, 2, 32, 64),
         (torch.bfloat16, 32, 32, 64, 16)]


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", CASES)
def test_nested_tree_matches_both_references(rng, dtype, heads, kv_heads, dim, block_size) -> None:
    tree = nested_tree(rng, 24, system=rng.randint(1, 3000), fewshot=rng.randint(1, 800), groups=3, unshared=3,
                       max_suffix=600, block_size=block_size)
    check(tree, BatchSpec((1,), (1,), heads, kv_heads, dim, block_size, dtype), rng.randrange(2**31))


def test_256_members_with_few_shot_subsets(rng) -> None:
    tree = nested_tree(rng, 256, system=rng.randint(1000, 2500), fewshot=rng.randint(100, 500), groups=5,
                       unshared=6, max_suffix=512, block_size=16)
    check(tree, BatchSpec((1,), (1,), 32, 8, 128, 16, torch.bfloat16), rng.randrange(2**31))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_16k_prefix(rng, dtype) -> None:
    tree = nested_tree(rng, 12, system=16384, fewshot=rng.randint(16, 2000), groups=2, unshared=2,
                       max_suffix=512, block_size=16)
    check(tree, BatchSpec((1,), (1,), 32, 8, 128, 16, dtype), rng.randrange(2**31))


def test_next_step_reuses_the_plan_layout(rng) -> None:
    """Two steps of one batch through plans sharing ``layout`` (as the engine's PlanCache hands
    them out): the second builds only its suffix tables and lengths, and both are exact."""
    seed = rng.randrange(2**31)
    tree = nested_tree(rng, 64, system=rng.randint(1000, 5000), fewshot=rng.randint(16, 500), groups=3,
                       unshared=3, max_suffix=400, block_size=16)
    batch = random_shared_batch(tree, BatchSpec((1,), (1,), 32, 8, 128, 16, torch.bfloat16), "cuda", seed)
    plan = batch.meta.shared
    shorter = [max(start + 1, n - rng.randint(1, 40)) for start, n in zip(plan.suffix_start,
                                                                          batch.meta.seq_lens.tolist())]
    earlier = dataclasses.replace(batch, meta=dataclasses.replace(
        batch.meta, seq_lens=torch.tensor(shorter, dtype=torch.int32, device="cuda"),
        shared=dataclasses.replace(plan, tensors={}, layout=plan.layout)))
    attention = TritonAttention()
    items = None
    for b in (earlier, batch):
        out = attention.forward(b.q, b.k_cache, b.v_cache, b.meta, b.scale)
        items = plan.layout["triton_shared.items"] if items is None else items
        assert_matches_reference(out, b, f"paged reference (seed {seed})")
        assert_matches_reference(out, b, f"shared reference (seed {seed})", ref=shared_reference_output(b))
    assert plan.layout["triton_shared.items"] is items, f"the second step rebuilt the layout (seed {seed})"


C = SharedPrefixConfig


@pytest.mark.parametrize("config", [
    C(block_m=64, num_warps=4, num_stages=2, programs_per_sm=2, maxnreg=0, overlap_suffix=False),  # the old tiles
    C(block_m=64, num_warps=4, num_stages=2, programs_per_sm=2),
    C(block_m=64, num_warps=4, num_stages=3, programs_per_sm=2, maxnreg=0),
    C(block_m=64, block_n=32, num_warps=4, num_stages=3, programs_per_sm=3, maxnreg=0),
    C(num_stages=4), C(block_n=32, num_stages=4), C(overlap_suffix=False),
    C(programs_per_sm=1, min_chunk_tokens=8192, maxnreg=0),
    C(block_m=16, block_n=128, num_warps=4, num_stages=2, maxnreg=0),
    C(block_m=32, block_n=16, num_warps=4, num_stages=5, min_chunk_tokens=16, programs_per_sm=8)])
def test_configs_match_references(rng, config) -> None:
    tree = nested_tree(rng, 64, system=rng.randint(500, 5000), fewshot=rng.randint(16, 300), groups=4,
                       unshared=4, max_suffix=400, block_size=16)
    check(tree, BatchSpec((1,), (1,), 32, 8, 128, 16, torch.bfloat16), rng.randrange(2**31), config)


@pytest.mark.parametrize("n,heads,parts,dim", [(256, 32, 3, 128), (3, 32, 64, 128), (37, 28, 10, 128),
                                              (64, 16, 5, 256), (300, 8, 2, 32), (3, 4, 130, 64)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_merge_matches_float64_and_never_reads_empty_partials(rng, n, heads, parts, dim, out_dtype) -> None:
    seed = rng.randrange(2**31)
    part_out, part_lse = random_partials(n, heads, parts, dim, seed, "cuda")
    out = torch.full((n, heads, dim + 8), float("nan"), dtype=out_dtype, device="cuda")[..., :dim]
    merge_partials(part_out, part_lse, out)
    assert not out.isnan().any() and (out[0] == 0).all(), f"seed {seed}"
    assert_rows_close(out, merge_reference(part_out, part_lse), tolerance(out_dtype), f"(seed {seed})")


def test_engine_greedy_tokens_same_with_and_without_the_shared_path(tiny_model) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    system = torch.randint(3, 500, (100,), generator=g).tolist()
    fewshot = [torch.randint(3, 500, (40,), generator=g).tolist() for _ in range(2)]
    prompts = [system + fewshot[i % 2] + torch.randint(3, 500, (3 + i,), generator=g).tolist() for i in range(12)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    results = []
    for shared in (True, False):
        engine = make_engine(tiny_model, device="cuda", prefix_caching=True, shared_prefix_attention=shared,
                             shared_prefix_min_tokens=0, num_blocks=1024)  # take the path even at tiny sizes
        assert engine.runner.backend.name == "triton"
        engine.generate(prompts[:1], params)  # cache the system prompt so the others share its blocks
        results.append([r.token_ids for r in engine.generate(prompts, params)])
        assert (engine.runner.shared_prefix_steps > 0) == shared
        assert (engine.runner.shared_graph.replays > 0) == shared  # the batch kept its plan: replayed
    assert results[0] == results[1]


def test_shared_step_graphs_follow_a_changing_batch(tiny_model) -> None:
    """Requests leave at different steps (each departure changes the plan, so the graph is
    dropped and, once the smaller batch has kept its plan, captured again) and more join
    mid-way: greedy tokens equal the plain path's and the eager shared path's, every block
    comes back."""
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(1)
    system = torch.randint(3, 500, (70,), generator=g).tolist()
    fewshot = [torch.randint(3, 500, (33,), generator=g).tolist() for _ in range(3)]
    prompts = [system + fewshot[i % 3] + torch.randint(3, 500, (2 + i,), generator=g).tolist() for i in range(16)]
    params = [SamplingParams(max_tokens=8 + 4 * (i % 5), temperature=0, ignore_eos=True) for i in range(16)]
    runs = {}
    for name, kwargs in {"graphs": dict(shared_prefix_attention=True),
                         "eager": dict(shared_prefix_attention=True, cuda_graphs=False),
                         "plain": dict(shared_prefix_attention=False)}.items():
        engine = make_engine(tiny_model, device="cuda", prefix_caching=True, shared_prefix_min_tokens=0,
                             num_blocks=1024, **kwargs)
        engine.generate(prompts[:1], params[:1])
        free = engine.kv.num_free_blocks
        tokens: dict[str, list[int]] = {f"a{i}": [] for i in range(16)}

        def step(engine=engine, tokens=tokens) -> None:
            for out in engine.step():
                tokens[out.request_id].extend(out.new_token_ids)
        for i in range(10):
            engine.add_request(f"a{i}", prompts[i], params[i])
        for _ in range(12):  # the first ten are decoding, some about to finish, when six more join
            step()
        for i in range(10, 16):
            engine.add_request(f"a{i}", prompts[i], params[i])
        while engine.has_unfinished():
            step()
        assert all(len(t) == p.max_tokens for t, p in zip(tokens.values(), params)), name
        runs[name] = tokens
        assert engine.kv.num_free_blocks == free, name
        if name == "graphs":
            graph = engine.runner.shared_graph
            assert graph.captures >= 2 and graph.replays > 0, (graph.captures, graph.replays)
    assert runs["graphs"] == runs["eager"] == runs["plain"]
