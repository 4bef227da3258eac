"""Triton attention kernels on CUDA against the float64 torch reference.

Random inputs from a generator seeded by the test's id (the same on every run; the seed is
printed with a failing test's report): shuffled, non-contiguous block tables, ragged lengths
with 1 and block-boundary values, long contexts, strided q. Unused cache slots hold NaN, so a
read past a sequence shows up. Outputs are compared per (sequence, head) with a tolerance from
the dtype (tests/attention_checks.py): one wrong sequence in a batch fails.
"""

from __future__ import annotations

import random

import pytest
import torch

from benchmarks.paged_batches import BatchSpec, PagedBatch, random_batch
from engine.attention import get_backend
from tests.attention_checks import assert_matches_reference, ragged_seq_lens, seeded_rng

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(32, 8, 128), (32, 32, 64), (28, 4, 128), (16, 1, 256), (8, 2, 32)]  # H_q, H_kv, D


@pytest.fixture
def rng(request) -> random.Random:
    return seeded_rng(request)


def attend(batch: PagedBatch, backend=None) -> torch.Tensor:
    backend = get_backend("triton") if backend is None else backend
    out = backend.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    torch.cuda.synchronize()
    return out


def assert_matches(out: torch.Tensor, batch: PagedBatch, seed: int) -> None:
    assert out.is_contiguous()
    assert_matches_reference(out, batch, f"(seed {seed})")


CASES = [(dtype, *shape, 16) for dtype in DTYPES for shape in SHAPES] + [
    (torch.bfloat16, 32, 8, 128, 32), (torch.bfloat16, 32, 8, 128, 64), (torch.float16, 28, 4, 128, 64),
    (torch.float32, 8, 2, 32, 64)]


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", CASES)
def test_decode_matches_reference(rng, dtype, heads, kv_heads, dim, block_size) -> None:
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 12, 3000, block_size) + (rng.randint(20000, 33000),)
    spec = BatchSpec((1,) * len(seq_lens), seq_lens, heads, kv_heads, dim, block_size, dtype)
    batch = random_batch(spec, "cuda", seed, strided_q=True)
    assert_matches(attend(batch), batch, seed)


@pytest.mark.parametrize("config", [dict(max_splits=1), dict(heads_fastest=True, programs_per_sm=16),
                                    dict(block_n=128, num_stages=5, num_warps=8, min_split_tokens=64),
                                    dict(heads_fastest=False, block_n=64), dict(fused_merge=True),
                                    dict(fused_merge=True, programs_per_sm=8), dict(programs_per_sm=2),
                                    dict(programs_per_sm=8, num_warps=8), dict(table_lookahead=True, num_stages=3),
                                    dict(table_lookahead=True, num_stages=4, fused_merge=True),
                                    dict(table_lookahead=True, block_n=64, num_stages=3, programs_per_sm=8)])
def test_decode_configs_match_reference(rng, config) -> None:
    from engine.attention.triton_backend import TritonAttention
    from engine.attention.triton_decode import DecodeConfig
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 40, 5000, 16)
    batch = random_batch(BatchSpec((1,) * 40, seq_lens, 32, 8, 128, 16, torch.bfloat16), "cuda", seed)
    out = TritonAttention(decode=DecodeConfig(**config)).forward(batch.q, batch.k_cache, batch.v_cache,
                                                                 batch.meta, batch.scale)
    assert_matches(out, batch, seed)


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", CASES)
def test_mixed_batch_matches_reference(rng, dtype, heads, kv_heads, dim, block_size) -> None:
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 10, 1500, block_size) + (rng.randint(3000, 4500),)
    q_lens = tuple(rng.choice([1, 1, s, rng.randint(1, min(s, 700))]) for s in seq_lens)
    spec = BatchSpec(q_lens, seq_lens, heads, kv_heads, dim, block_size, dtype)
    batch = random_batch(spec, "cuda", seed, strided_q=rng.random() < 0.5)
    assert_matches(attend(batch), batch, seed)


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
    assert_matches(out, batch, seed)
    out.fill_(float("nan"))
    prefill_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale, out, PrefillConfig())
    assert_matches(out, batch, seed)


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


@pytest.mark.parametrize("fused_merge,table_lookahead", [(True, False), (False, False), (False, True)])
def test_decode_graph_replay_follows_seq_lens_changed_in_place(rng, fused_merge, table_lookahead) -> None:
    """Capture two decode layers with a 4096-token bound, then grow and shrink the live lengths.
    Two fused launches in a row share the split counters: the first must leave them at zero."""
    from engine.attention.triton_backend import TritonAttention
    from engine.attention.triton_decode import DecodeConfig
    seed = rng.randrange(2**31)
    lens = ragged_seq_lens(rng, 8, 4096, 16)
    spec = BatchSpec((1,) * 8, tuple(min(4096, n + 300) for n in lens), 32, 8, 128, dtype=torch.bfloat16)
    batch = random_batch(spec, "cuda", seed, max_seq_len=4096)
    live = batch.meta.seq_lens
    live.copy_(torch.tensor(lens, dtype=torch.int32))
    backend = TritonAttention(decode=DecodeConfig(fused_merge=fused_merge, table_lookahead=table_lookahead,
                                                  num_stages=3 if table_lookahead else 2))
    q2 = torch.randn_like(batch.q)

    def layers() -> tuple[torch.Tensor, torch.Tensor]:
        return (backend.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale),
                backend.forward(q2, batch.v_cache, batch.k_cache, batch.meta, batch.scale))
    layers()  # compile (and size the counters) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layers()
    for new_lens in (spec.seq_lens, lens, [rng.randint(1, n) for n in spec.seq_lens]):
        live.copy_(torch.tensor(new_lens, dtype=torch.int32))
        batch.q.normal_()
        q2.normal_()
        graph.replay()
        eager = layers()
        torch.cuda.synchronize()
        for got, want in zip(captured, eager):
            assert torch.equal(got, want), f"graph and eager differ (seed {seed}, lens {new_lens})"
        assert_matches(captured[0], batch, seed)
    assert not any(b.any() for b in backend.counters.buffers.get(batch.q.device, [])), f"seed {seed}"


def split_decode(batch: PagedBatch, splits: int, counters: torch.Tensor | None) -> torch.Tensor:
    """Output of one decode with ``splits`` splits: fused when counters are given, else two launches."""
    from engine.attention.triton_decode import DecodeConfig, decode_merged, decode_partials
    from engine.attention.triton_merge import merge_partials
    (b, h, d), nan = batch.q.shape, float("nan")
    part_out = torch.full((b, h, splits, d), nan, device="cuda")
    part_lse = torch.full((b, h, splits), nan, device="cuda")
    out = torch.full_like(batch.q, nan)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.meta.block_tables, batch.meta.seq_lens, batch.scale,
            part_out, part_lse)
    if counters is None:
        decode_partials(*args, DecodeConfig())
        merge_partials(part_out, part_lse, out)
    else:
        decode_merged(*args, out, counters, DecodeConfig())
    return out


@pytest.mark.parametrize("dtype,heads,kv_heads,dim", [(torch.bfloat16, 32, 8, 128), (torch.float32, 32, 8, 128),
                                                      (torch.bfloat16, 16, 1, 256), (torch.float16, 32, 32, 64)])
@pytest.mark.parametrize("splits", [2, 7, 64])
def test_fused_merge_equals_unfused_and_repeats(rng, dtype, heads, kv_heads, dim, splits) -> None:
    """The fused merge against the two-launch path, 30 launches in a row: any ordering race
    (a merge reading a partial before it lands) would show up as a differing or NaN output."""
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 40, 3000, 16) + (rng.randint(5000, 9000),)
    spec = BatchSpec((1,) * len(seq_lens), seq_lens, heads, kv_heads, dim, 16, dtype)
    batch = random_batch(spec, "cuda", seed, strided_q=True)
    want = split_decode(batch, splits, None)
    counters = torch.zeros(len(seq_lens) * kv_heads, dtype=torch.int32, device="cuda")
    first = split_decode(batch, splits, counters)
    for _ in range(30):
        assert torch.equal(split_decode(batch, splits, counters), first), f"not repeatable (seed {seed})"
    assert not counters.any(), f"counters not reset (seed {seed})"
    msg = f"seed {seed}, {splits} splits"
    if dtype == torch.float32:
        torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-6, msg=msg)
    else:  # equal fp32 sums up to rounding, then one rounding to 16 bits: at most one ulp apart
        torch.testing.assert_close(first.float(), want.float(), rtol=2**-7, atol=1e-5, msg=msg)
    assert_matches(first, batch, seed)


def test_graph_keeps_its_counters_after_they_grow(rng) -> None:
    """A graph captured at a small batch still replays correctly after a larger eager batch has
    replaced the counter buffer (small allocations filled with 7 would take the old buffer's
    memory if it had been freed); growing the counters inside a capture is refused."""
    from engine.attention.triton_backend import SplitCounters, TritonAttention
    from engine.attention.triton_decode import DecodeConfig
    seed = rng.randrange(2**31)
    backend = TritonAttention(decode=DecodeConfig(programs_per_sm=16, fused_merge=True))
    # first buffer: 4 x 8 counters; 64 x 8 (split, since 64 x 8 < 16 programs per SM) must grow it.
    # The small batch's sequences are long enough to split (ragged_seq_lens would give 4 lengths
    # under 32 tokens here, one split each, and no counters at all)
    backend.counters = SplitCounters(min_size=16)
    small = random_batch(BatchSpec((1,) * 4, tuple(rng.randint(1000, 2000) for _ in range(4)), 32, 8, 128,
                                   dtype=torch.bfloat16), "cuda", seed)
    args = (small.q, small.k_cache, small.v_cache, small.meta, small.scale)
    backend.forward(*args)
    torch.cuda.synchronize()
    assert [b.numel() for b in backend.counters.buffers[small.q.device]] == [32], "4 x 8 should split"
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = backend.forward(*args)
        with pytest.raises(RuntimeError, match="before capturing"):
            backend.counters.get(small.q.device, 1 << 20)
    large = random_batch(BatchSpec((1,) * 64, ragged_seq_lens(rng, 64, 2000, 16), 32, 8, 128,
                                   dtype=torch.bfloat16), "cuda", seed + 1)
    assert_matches(attend(large, backend), large, seed + 1)
    assert len(backend.counters.buffers[small.q.device]) == 2, "64 x 8 counters should have grown the buffer"
    del large
    torch.cuda.empty_cache()
    squatters = [torch.full((1024,), 7, dtype=torch.int32, device="cuda") for _ in range(256)]
    small.q.normal_()
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(captured, small, seed)
    del squatters
