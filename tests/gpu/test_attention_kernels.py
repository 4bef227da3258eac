"""Triton attention kernels on CUDA against the float64 torch reference.

Every run draws fresh random inputs (the seed is in each failure message): shuffled,
non-contiguous block tables, ragged lengths with 1 and block-boundary values, long
contexts, strided q. Unused cache slots hold NaN, so a read past a sequence shows up.
"""

from __future__ import annotations

import random

import pytest
import torch

from engine.attention import get_backend
from engine.attention.triton_inputs import (TOLERANCE, BatchSpec, PagedBatch, random_batch, ragged_seq_lens,
                                            reference_output, relative_error)

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(32, 8, 128), (32, 32, 64), (28, 4, 128), (16, 1, 256), (8, 2, 32)]  # H_q, H_kv, D


@pytest.fixture
def rng() -> random.Random:
    return random.Random(random.SystemRandom().randrange(2**31))


def attend(batch: PagedBatch) -> torch.Tensor:
    out = get_backend("triton").forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    torch.cuda.synchronize()
    return out


def assert_matches(out: torch.Tensor, batch: PagedBatch, seed: int, tol: float) -> None:
    assert out.shape == batch.q.shape and out.dtype == batch.q.dtype and out.is_contiguous()
    err = relative_error(out, reference_output(batch))
    assert err < tol, f"relative error {err:.2e} >= {tol} (seed {seed}, seq_lens {batch.meta.seq_lens.tolist()})"


CASES = [(dtype, *shape, 16) for dtype in DTYPES for shape in SHAPES] + [
    (torch.bfloat16, 32, 8, 128, 32), (torch.bfloat16, 32, 8, 128, 64), (torch.float16, 28, 4, 128, 64),
    (torch.float32, 8, 2, 32, 64)]


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", CASES)
def test_decode_matches_reference(rng, dtype, heads, kv_heads, dim, block_size) -> None:
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 12, 3000, block_size) + (rng.randint(20000, 33000),)
    spec = BatchSpec((1,) * len(seq_lens), seq_lens, heads, kv_heads, dim, block_size, dtype)
    batch = random_batch(spec, "cuda", seed, strided_q=True)
    assert_matches(attend(batch), batch, seed, TOLERANCE[dtype])


@pytest.mark.parametrize("config", [dict(max_splits=1), dict(heads_fastest=True, programs_per_sm=16),
                                    dict(block_n=128, num_stages=5, num_warps=8, min_split_tokens=64),
                                    dict(heads_fastest=False, block_n=64)])
def test_decode_configs_match_reference(rng, config) -> None:
    from engine.attention.triton_backend import TritonAttention
    from engine.attention.triton_decode import DecodeConfig
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 40, 5000, 16)
    batch = random_batch(BatchSpec((1,) * 40, seq_lens, 32, 8, 128, 16, torch.bfloat16), "cuda", seed)
    out = TritonAttention(decode=DecodeConfig(**config)).forward(batch.q, batch.k_cache, batch.v_cache,
                                                                 batch.meta, batch.scale)
    assert_matches(out, batch, seed, 1e-2)


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", CASES)
def test_mixed_batch_matches_reference(rng, dtype, heads, kv_heads, dim, block_size) -> None:
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 10, 1500, block_size) + (rng.randint(3000, 4500),)
    q_lens = tuple(rng.choice([1, 1, s, rng.randint(1, min(s, 700))]) for s in seq_lens)
    spec = BatchSpec(q_lens, seq_lens, heads, kv_heads, dim, block_size, dtype)
    batch = random_batch(spec, "cuda", seed, strided_q=rng.random() < 0.5)
    assert_matches(attend(batch), batch, seed, TOLERANCE[dtype])


def test_kernels_write_every_output_element(rng) -> None:
    from engine.attention.triton_decode import DecodeConfig, decode_partials
    from engine.attention.triton_merge import merge_partials
    from engine.attention.triton_prefill import PrefillConfig, prefill_attention
    seed = rng.randrange(2**31)
    batch = random_batch(BatchSpec((1,) * 5, (1, 16, 17, 900, 5000), 32, 8, 128, dtype=torch.bfloat16),
                         "cuda", seed)
    (b, h, d), splits = batch.q.shape, 24
    part_out = torch.full((b, h, splits, d), float("nan"), device="cuda")
    part_lse = torch.full((b, h, splits), float("nan"), device="cuda")
    decode_partials(batch.q, batch.k_cache, batch.v_cache, batch.meta.block_tables, batch.meta.seq_lens,
                    batch.scale, part_out, part_lse, DecodeConfig())
    assert not part_out.isnan().any() and not part_lse.isnan().any(), f"seed {seed}"
    assert torch.isneginf(part_lse[0, :, 1:]).all() and (part_out[0, :, 1:] == 0).all()
    out = torch.full_like(batch.q, float("nan"))
    merge_partials(part_out, part_lse, out)
    assert_matches(out, batch, seed, 1e-2)
    out.fill_(float("nan"))
    prefill_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale, out, PrefillConfig())
    assert_matches(out, batch, seed, 1e-2)


def test_write_kv_matches_reference_and_skips_padding(rng) -> None:
    from engine.attention.reference import write_kv
    seed = rng.randrange(2**31)
    batch = random_batch(BatchSpec((7, 1, 300), (7, 40, 310), 32, 8, 128, dtype=torch.bfloat16), "cuda", seed)
    slots = batch.meta.slot_mapping.clone()
    slots[torch.randperm(slots.numel(), device="cuda")[:50]] = -1
    ours = [batch.k_cache.clone(), batch.v_cache.clone()]
    theirs = [batch.k_cache.clone(), batch.v_cache.clone()]
    get_backend("triton").write_kv(*ours, batch.new_k, batch.new_v, slots)
    write_kv(*theirs, batch.new_k, batch.new_v, slots)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), f"seed {seed}"


def test_decode_graph_replay_follows_seq_lens_changed_in_place(rng) -> None:
    """Capture one decode step with a 4096-token bound, then grow and shrink the live lengths."""
    seed = rng.randrange(2**31)
    lens = ragged_seq_lens(rng, 8, 4096, 16)
    spec = BatchSpec((1,) * 8, tuple(min(4096, n + 300) for n in lens), 32, 8, 128, dtype=torch.bfloat16)
    batch = random_batch(spec, "cuda", seed, max_seq_len=4096)
    live = batch.meta.seq_lens
    live.copy_(torch.tensor(lens, dtype=torch.int32))
    backend = get_backend("triton")
    args = (batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    backend.forward(*args)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = backend.forward(*args)
    for new_lens in (spec.seq_lens, lens, [rng.randint(1, n) for n in spec.seq_lens]):
        live.copy_(torch.tensor(new_lens, dtype=torch.int32))
        batch.q.normal_()
        graph.replay()
        eager = attend(batch)
        assert torch.equal(captured, eager), f"graph and eager differ (seed {seed}, lens {new_lens})"
        assert_matches(captured, batch, seed, 1e-2)
