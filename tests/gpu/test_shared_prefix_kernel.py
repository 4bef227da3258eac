"""The shared-prefix (Hydragen) Triton path on CUDA against both torch references, and in the engine.

Every run draws fresh random inputs (the seed is in each failure message): prefix trees with
a system prompt shared by all, few-shot nodes shared by subsets, sequences sharing nothing
mixed in, shuffled block ids and NaN in every cache slot a kernel must not read. Outputs are
compared in float64 with ``shared_prefix_reference`` (the decomposition) and with plain
``reference.paged_attention``.
"""

from __future__ import annotations

import random

import pytest
import torch

from engine.attention.triton_backend import TritonAttention
from engine.attention.triton_inputs import TOLERANCE, BatchSpec, reference_output, relative_error
from engine.attention.triton_shared_inputs import PrefixTree, nested_tree, random_shared_batch, shared_reference_output
from engine.attention.triton_shared_kernel import SharedPrefixConfig
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine


@pytest.fixture
def rng() -> random.Random:
    return random.Random(random.SystemRandom().randrange(2**31))


def check(tree: PrefixTree, spec: BatchSpec, seed: int, config: SharedPrefixConfig = SharedPrefixConfig()) -> None:
    batch = random_shared_batch(tree, spec, "cuda", seed)
    plan = batch.meta.shared
    assert plan is not None, f"no sharing planned (seed {seed})"
    out = TritonAttention(shared=config).forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    torch.cuda.synchronize()
    assert out.shape == batch.q.shape and out.dtype == spec.dtype and out.is_contiguous()
    assert not plan.tensors["triton_shared.part_out"].isnan().any(), f"a partial slot was never written (seed {seed})"
    where = f"(seed {seed}, {len(plan.segments)} segments, seq_lens {batch.meta.seq_lens.tolist()})"
    for name, ref in (("shared_prefix_reference", shared_reference_output(batch)),
                      ("paged reference", reference_output(batch))):
        err = relative_error(out, ref)
        assert err < TOLERANCE[spec.dtype], f"{name}: relative error {err:.2e} >= {TOLERANCE[spec.dtype]} {where}"


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


@pytest.mark.parametrize("config", [SharedPrefixConfig(block_m=128, num_warps=8),
                                    SharedPrefixConfig(programs_per_sm=1, min_chunk_tokens=8192),
                                    SharedPrefixConfig(block_n=32, num_stages=3, min_chunk_tokens=64),
                                    SharedPrefixConfig(block_m=16, block_n=128),
                                    SharedPrefixConfig(overlap_suffix=True),
                                    SharedPrefixConfig(programs_per_sm=1, overlap_suffix=True, num_stages=3)])
def test_configs_match_references(rng, config) -> None:
    tree = nested_tree(rng, 64, system=rng.randint(500, 5000), fewshot=rng.randint(16, 300), groups=4,
                       unshared=4, max_suffix=400, block_size=16)
    check(tree, BatchSpec((1,), (1,), 32, 8, 128, 16, torch.bfloat16), rng.randrange(2**31), config)


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
    assert results[0] == results[1]
