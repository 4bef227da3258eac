"""The shared-prefix (Hydragen) Triton path on the CPU, through Triton's interpreter.

As in tests/test_triton_interpret.py (read why there), the ``case_*`` functions run in a
child pytest with TRITON_INTERPRET=1; the parent runs that child and the ``test_*``
checks of the host-side layout, which need no Triton. Inputs are random draws from a
generator seeded by the test's id (printed with a failing case's report), outputs compared per
(sequence, head) with float64 references; shapes are tiny.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest
import torch

from benchmarks.paged_batches import BatchSpec
from benchmarks.shared_prefix_batches import PrefixTree, random_shared_batch
from engine.attention.shared_prefix import SharedPrefixPlan, SharedSegment
from engine.attention.shared_prefix.triton_layout import build_segment_work, chunk_length
from engine.attention.triton_merge import merge_tiles
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
from tests.interpreter import run_interpreter_cases
from tests.test_triton_interpret import _patch_interpreter


def test_shared_prefix_kernels_under_the_triton_interpreter() -> None:
    run_interpreter_cases(__file__)


def test_layout_gives_each_member_one_slot_per_chunk_after_its_suffix_slots() -> None:
    plan = SharedPrefixPlan([SharedSegment((7, 8, 9), 0, (0, 1, 2)), SharedSegment((4,), 48, (1, 2))],
                            [64, 64, 64, 0])
    work = build_segment_work(plan, 4, 16, suffix_slots=2, members_per_tile=2, chunk_tokens=32)
    assert work.blocks == [7, 8, 9, 4]
    # segment 0: 48 keys = chunks [0, 32) and [32, 48), members in tiles (0, 1) and (2,)
    assert work.items == [(0, 0, 32, 0, 2, 0), (0, 0, 32, 2, 1, 0), (0, 32, 48, 0, 2, 1), (0, 32, 48, 2, 1, 1),
                          (3, 0, 16, 3, 2, 0)]
    assert work.member_rows == [0, 1, 2, 1, 2] and work.member_slots == [2, 2, 2, 4, 4]
    assert work.slots_used == [4, 5, 5, 2] and work.num_slots == 5
    assert work.unused_slots() == ([0, 3, 3, 3], [4, 2, 3, 4])


@pytest.mark.parametrize("members,per_tile,heads,target,floor,expected", [
    (40, 16, 2, 48, 32, 128),    # 3 tiles x 2 heads = 6 programs per chunk: 8 chunks of 128 fill one wave
    (40, 16, 2, 48, 512, 512),   # the floor wins
    (40, 8, 1, 8, 32, 384),      # 5 per chunk: one wave (1 chunk, 1024 keys) loses to 2 waves of 3 chunks of 384
    (40, 16, 2, 1, 32, 1024),    # more than MAX_WAVES waves even unchunked: spread the work, at most one segment
])
def test_chunks_fill_whole_waves_and_respect_the_floor(members, per_tile, heads, target, floor, expected) -> None:
    plan = SharedPrefixPlan([SharedSegment(tuple(range(64)), 0, tuple(range(members)))], [1024] * members)
    assert chunk_length(plan, 16, per_tile, heads, target, floor, 64) == expected


def test_chunks_of_nested_segments_fit_one_wave() -> None:
    # a 4096-key system prompt (32 members: 2 tiles) and a 1024-key few-shot node (16 members: 1 tile), 8 heads
    plan = SharedPrefixPlan([SharedSegment(tuple(range(256)), 0, tuple(range(32))),
                             SharedSegment(tuple(range(256, 320)), 4096, tuple(range(16)))], [5120] * 32)
    def programs(chunk: int) -> int:
        return 8 * (2 * -(-4096 // chunk) + -(-1024 // chunk))
    chunk = chunk_length(plan, 16, 16, 8, 132, 128, 64)
    assert chunk == 640 and programs(640) == 128 and programs(576) > 132  # 576: 8 + 8 + 2 tile-chunks


@pytest.mark.parametrize("pairs,parts,dim,expected", [
    (8192, 3, 128, (8, 4)),   # B256 x 32 heads, 1 suffix split + 2 chunks: 8 pairs x 4 partials x 128 per program
    (512, 5, 128, (4, 8)),    # 128 programs exactly
    (32, 64, 128, (1, 32)),   # B1 x 32 heads, 64 splits: two steps of 32 partials
    (100, 3, 128, (1, 4)),    # few pairs: one per program
])
def test_merge_tiles_load_about_4k_elements_per_step(pairs, parts, dim, expected) -> None:
    assert merge_tiles(pairs, parts, dim) == expected


def test_layout_refuses_a_plan_of_another_batch() -> None:
    plan = SharedPrefixPlan([SharedSegment((1,), 0, (0, 1))], [16, 16])
    with pytest.raises(ValueError, match="covers 2 sequences, the batch 3"):
        build_segment_work(plan, 3, 16, 1, 4, 16)


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules (interpreted: the child runs with TRITON_INTERPRET=1)."""
    with pytest.MonkeyPatch.context() as mp:
        _patch_interpreter(mp)
        from engine.attention import triton_backend, triton_decode, triton_merge
        from engine.attention.shared_prefix import triton_backend as shared_backend
        from engine.attention.shared_prefix import triton_kernel as shared_kernel
        yield SimpleNamespace(triton_backend=triton_backend, triton_decode=triton_decode, triton_merge=triton_merge,
                              shared_kernel=shared_kernel, shared_backend=shared_backend)


@pytest.fixture
def rng(request) -> random.Random:
    return seeded_rng(request)


def backend(kernels, **shared):
    """Small tiles and short chunks (ending in partial key tiles): tiny batches still get several
    member tiles and key chunks."""
    decode = kernels.triton_decode.DecodeConfig(block_n=16, programs_per_sm=24, min_split_tokens=16)
    config = kernels.shared_kernel.SharedPrefixConfig(**{"block_m": 16, "block_n": 32, "programs_per_sm": 64,
                                                                "min_chunk_tokens": 16, **shared})
    return kernels.triton_backend.TritonAttention(decode=decode, shared=config)


def check(kernels, tree: PrefixTree, spec: BatchSpec, seed: int, **shared) -> None:
    batch = random_shared_batch(tree, spec, "cpu", seed)
    assert batch.meta.shared is not None, f"no sharing planned for {tree}"
    attn = backend(kernels, **shared)
    out = attn.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert_matches_reference(out, batch, f"paged reference, {tree} {spec} (seed {seed})")
    assert_matches_reference(out, batch, f"shared reference, {tree} {spec} (seed {seed})",
                             ref=shared_reference_output(batch))
    again = attn.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)  # cached layout
    assert torch.equal(out, again), f"second layer's call differs (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads,dim,block_size", [(4, 2, 32, 16), (6, 2, 16, 16), (4, 1, 32, 32)])
def case_nested_tree_matches_both_references(kernels, rng, dtype, heads, kv_heads, dim, block_size) -> None:
    tree = nested_tree(rng, 11, system=3 * block_size, fewshot=block_size, groups=2, unshared=1, max_suffix=40,
                       block_size=block_size)
    check(kernels, tree, BatchSpec((1,), (1,), heads, kv_heads, dim, block_size, dtype), rng.randrange(2**31))


@pytest.mark.parametrize("shared", [dict(block_m=32), dict(programs_per_sm=1, min_chunk_tokens=512),
                                    dict(block_n=16, num_stages=1)])
def case_configs_and_segments_without_few_shot(kernels, rng, shared) -> None:
    tree = nested_tree(rng, 12, system=48, fewshot=0, groups=0, unshared=2, max_suffix=20, block_size=16)
    check(kernels, tree, BatchSpec((1,), (1,), 4, 2, 32, 16, torch.bfloat16), rng.randrange(2**31), **shared)


def case_segment_kernel_writes_exactly_its_slots(kernels, rng) -> None:
    seed = rng.randrange(2**31)
    tree = PrefixTree(((-1, 32), (0, 16)), ((1, 5), (1, 9), (0, 3), (-1, 7)))
    batch = random_shared_batch(tree, BatchSpec((1,), (1,), 4, 2, 32, 16), "cpu", seed)
    attn = backend(kernels)
    attn.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    tensors = batch.meta.shared.tensors
    step = kernels.shared_backend.SharedStep.cached(batch.meta.shared, tensors["triton_shared.key"])
    part_out, part_lse = torch.full_like(step.part_out, float("nan")), torch.full_like(step.part_lse, float("nan"))
    tiles = attn.shared_config.tiles(2, 32, 4, max(len(s.members) for s in batch.meta.shared.segments))
    kernels.shared_kernel.segment_partials(batch.q, batch.k_cache, batch.v_cache, step.blocks, step.items,
                                                  step.member_rows, step.member_slots, batch.scale, part_out,
                                                  part_lse, tiles, attn.shared_config)
    expected = torch.zeros(part_lse.shape[0], part_lse.shape[2], dtype=torch.bool)
    items = step.items.tolist()
    for entry, (row, slot) in enumerate(zip(step.member_rows.tolist(), step.member_slots.tolist())):
        for chunk in {it[5] for it in items if it[3] <= entry < it[3] + it[4]}:
            expected[row, slot + chunk] = True
    expected = expected[:, None, :].expand(part_lse.shape)
    assert torch.equal(~part_lse.isnan(), expected), f"seed {seed}: {part_lse}"
    assert not part_out[expected].isnan().any() and part_out[~expected].isnan().all(), f"seed {seed}"


def case_next_step_reuses_the_plan_layout(kernels, rng) -> None:
    """Two steps of one batch through plans sharing ``layout`` (as PlanCache hands them out): the
    second step builds only its suffix tables and lengths, and both are exact."""
    seed = rng.randrange(2**31)
    tree = nested_tree(rng, 9, system=32, fewshot=16, groups=2, unshared=1, max_suffix=40, block_size=16)
    batch = random_shared_batch(tree, BatchSpec((1,), (1,), 4, 2, 32, 16), "cpu", seed)
    plan = batch.meta.shared
    lens = batch.meta.seq_lens.tolist()
    shorter = [max(start + 1, n - rng.randint(1, 20)) for start, n in zip(plan.suffix_start, lens)]
    earlier = dataclasses.replace(batch, meta=dataclasses.replace(
        batch.meta, seq_lens=torch.tensor(shorter, dtype=torch.int32),
        shared=dataclasses.replace(plan, tensors={}, layout=plan.layout)))
    attn = backend(kernels)
    for b in (earlier, batch):
        out = attn.forward(b.q, b.k_cache, b.v_cache, b.meta, b.scale)
        if b is earlier:
            items = plan.layout["triton_shared.items"]
        assert_matches_reference(out, b, f"paged reference (seed {seed})")
        assert_matches_reference(out, b, f"shared reference (seed {seed})", ref=shared_reference_output(b))
    assert plan.layout["triton_shared.items"] is items, f"the second step rebuilt the layout (seed {seed})"


@pytest.mark.parametrize("n,heads,parts,dim,step,min_programs", [
    (5, 3, 4, 32, 4096, 1),     # 12 pairs x 4 partials per program: one program, pairs masked at the end
    (5, 3, 4, 32, 4096, 128),   # one pair per program
    (3, 4, 13, 16, 64, 1),      # 4 partials per step: 4 steps, the last one masked
    (2, 8, 1, 64, 4096, 1),     # a single partial
    (6, 8, 3, 128, 2048, 4),    # Llama-like heads, 4 pairs per program
])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def case_merge_matches_float64_and_never_reads_empty_partials(kernels, rng, n, heads, parts, dim, step,
                                                              min_programs, out_dtype) -> None:
    """Inputs from ``random_partials`` (strided, empty partials holding NaN, an empty row, a row with only
    its last partial); the output a strided view too."""
    seed = rng.randrange(2**31)
    part_out, part_lse = random_partials(n, heads, parts, dim, seed, "cpu")
    out = torch.full((n, heads, dim + 8), float("nan"), dtype=out_dtype)[..., :dim]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.triton_merge, "STEP_ELEMENTS", step)
        mp.setattr(kernels.triton_merge, "MIN_PROGRAMS", min_programs)
        kernels.triton_merge.merge_partials(part_out, part_lse, out)
    want = merge_reference(part_out, part_lse)
    assert not out.isnan().any() and (out[0] == 0).all(), f"seed {seed}"
    assert_rows_close(out, want, tolerance(out_dtype), f"(seed {seed})")
    tol = 1e-6 if out_dtype == torch.float32 else 2**-7  # one live partial: copied, then rounded once
    torch.testing.assert_close(out[-1].float(), part_out[-1, :, -1], rtol=tol, atol=1e-6, msg=f"seed {seed}")


def case_default_config_with_128_row_tiles(kernels, rng) -> None:
    """The default tiles (128 rows: 64 members of a group of 2 in one tile) and register cap; on the
    CPU one multiprocessor, so chunks span whole segments."""
    from dataclasses import asdict
    defaults = asdict(kernels.shared_kernel.SharedPrefixConfig())
    tree = nested_tree(rng, 70, system=80, fewshot=32, groups=2, unshared=3, max_suffix=30, block_size=16)
    check(kernels, tree, BatchSpec((1,), (1,), 4, 2, 32, 16, torch.bfloat16), rng.randrange(2**31), **defaults)
