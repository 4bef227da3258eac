"""The Triton attention kernels' logic on the CPU, through Triton's interpreter (TRITON_INTERPRET=1).

Triton picks interpreter or compiler when a function is decorated (its own library
functions included), so the ``case_*`` functions run in a child pytest started with
TRITON_INTERPRET=1 and ``-o python_functions=case_*``; the parent session collects only
the ``test_*`` function that runs the child and shows its report on failure.
Inputs are random draws from a generator seeded by the test's id (the same on every run; the
seed is printed with a failing case's report); outputs are compared with the float64 reference
per (sequence, head) (tests/attention_checks.py). Shapes are tiny: the interpreter runs numpy
per program.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from benchmarks.paged_batches import BatchSpec, random_batch
from tests.attention_checks import (
    assert_attention_close,
    assert_matches_reference,
    ragged_seq_lens,
    seeded_rng,
    tolerance,
)
from tests.interpreter import run_interpreter_cases


def test_kernels_under_the_triton_interpreter() -> None:
    run_interpreter_cases(__file__)


def _patch_interpreter(mp: pytest.MonkeyPatch) -> None:
    """Two gaps of Triton 3.6's interpreter, patched for this child only: it calls int() on
    1-element arrays for loop bounds, which numpy >= 2.4 refuses (triton-lang/triton#9171),
    and its dot multiplies bfloat16 operands as their raw uint16 bits."""
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interpreter
    patch_tensor, dot = interpreter._patch_lang_tensor, interpreter.InterpreterBuilder.create_dot

    def patched_tensor(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    def as_fp32(h):
        if h.dtype != tl.bfloat16:
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, as_fp32(a), as_fp32(b), d, input_precision, max_num_imprecise_acc)
    mp.setattr(interpreter, "_patch_lang_tensor", patched_tensor)
    mp.setattr(interpreter.InterpreterBuilder, "create_dot", patched_dot)


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules (interpreted: the child runs with TRITON_INTERPRET=1)."""
    with pytest.MonkeyPatch.context() as mp:
        _patch_interpreter(mp)
        from engine.attention import triton_backend, triton_decode, triton_merge, triton_prefill, triton_write_kv
        yield SimpleNamespace(triton_backend=triton_backend, triton_decode=triton_decode,
                              triton_merge=triton_merge, triton_prefill=triton_prefill,
                              triton_write_kv=triton_write_kv)


@pytest.fixture
def rng(request) -> random.Random:
    return seeded_rng(request)


def backend(kernels, programs_per_sm: int = 24, heads_fastest: bool = False, fused_merge: bool = True,
            table_lookahead: bool = False):
    """Small tiles; with 1 'multiprocessor' on CPU, programs_per_sm=24 gives several splits, 1 gives one."""
    decode = kernels.triton_decode.DecodeConfig(block_n=16, programs_per_sm=programs_per_sm, min_split_tokens=16,
                                                heads_fastest=heads_fastest, fused_merge=fused_merge,
                                                table_lookahead=table_lookahead)
    prefill = kernels.triton_prefill.PrefillConfig(block_m=32, block_n=16)
    return kernels.triton_backend.TritonAttention(decode=decode, prefill=prefill)


def check(kernels, spec: BatchSpec, seed: int, strided_q: bool = False, **decode) -> None:
    batch = random_batch(spec, "cpu", seed, strided_q=strided_q)
    out = backend(kernels, **decode).forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert out.is_contiguous()
    assert_matches_reference(out, batch, f"{spec} (seed {seed})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads,dim,block_size", [(4, 2, 32, 16), (6, 2, 16, 32), (2, 2, 64, 64),
                                                           (4, 1, 32, 16), (16, 8, 16, 16)])
@pytest.mark.parametrize("heads_fastest", [False, True])
def case_decode_matches_reference(kernels, rng, dtype, heads, kv_heads, dim, block_size, heads_fastest) -> None:
    seq_lens = ragged_seq_lens(rng, 4, 3 * block_size + 5, block_size)
    spec = BatchSpec((1,) * 4, seq_lens, heads, kv_heads, dim, block_size, dtype)
    check(kernels, spec, rng.randrange(2**31), strided_q=True, heads_fastest=heads_fastest)


@pytest.mark.parametrize("programs_per_sm,heads_fastest,fused_merge,table_lookahead", [
    (1, False, True, False), (1, True, True, True), (24, True, True, False), (24, False, False, False),
    (24, True, True, True), (24, False, False, True)])
def case_decode_grid_orders_and_single_split(kernels, rng, programs_per_sm, heads_fastest, fused_merge,
                                             table_lookahead) -> None:
    spec = BatchSpec((1,) * 3, ragged_seq_lens(rng, 3, 60, 16), 4, 2, 32, 16, torch.bfloat16)
    check(kernels, spec, rng.randrange(2**31), programs_per_sm=programs_per_sm, heads_fastest=heads_fastest,
          fused_merge=fused_merge, table_lookahead=table_lookahead)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits,block_size", [(1, 16), (3, 16), (7, 32)])
def case_table_lookahead_gives_the_same_bits(kernels, rng, dtype, splits, block_size) -> None:
    """Reading the next tile's block ids one iteration ahead changes when rows are looked up,
    not what is summed: partials equal bit for bit, over lengths at tile and block boundaries
    (a tile past the slice's end looks up masked rows) and empty splits."""
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 6, 5 * block_size + 3, block_size)
    batch = random_batch(BatchSpec((1,) * 6, seq_lens, 4, 2, 32, block_size, dtype), "cpu", seed, strided_q=True)
    (b, h, d), runs = batch.q.shape, []
    for lookahead in (False, True):
        part_out = torch.full((b, h, splits, d), float("nan"))
        part_lse = torch.full((b, h, splits), float("nan"))
        config = kernels.triton_decode.DecodeConfig(block_n=16, table_lookahead=lookahead)
        kernels.triton_decode.decode_partials(batch.q, batch.k_cache, batch.v_cache, batch.meta.block_tables,
                                              batch.meta.seq_lens, batch.scale, part_out, part_lse, config)
        runs.append((part_out, part_lse))
    msg = f"seed {seed}, seq_lens {seq_lens}"
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1]), msg
    out = torch.empty_like(batch.q)
    kernels.triton_merge.merge_partials(*runs[1], out)
    assert_matches_reference(out, batch, msg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,block_size", [(4, 2, 16), (3, 1, 32), (2, 2, 16)])
def case_mixed_batch_matches_reference(kernels, rng, dtype, heads, kv_heads, block_size) -> None:
    seq_lens = ragged_seq_lens(rng, 5, 70, block_size)
    q_lens = tuple(rng.choice([1, s, rng.randint(1, s)]) for s in seq_lens)
    spec = BatchSpec(q_lens, seq_lens, heads, kv_heads, 32, block_size, dtype)
    check(kernels, spec, rng.randrange(2**31), strided_q=rng.random() < 0.5)


def case_split_count_depends_on_shapes_and_bound_only(kernels) -> None:
    cfg = kernels.triton_decode.DecodeConfig(programs_per_sm=4, min_split_tokens=32, max_splits=64)
    assert cfg.num_splits(1, 8, 512, 132) == 16       # bounded by 512 / 32 tokens
    assert cfg.num_splits(1, 8, 32768, 132) == 64     # 66 wanted, capped by max_splits
    assert cfg.num_splits(16, 8, 32768, 132) == 5     # ceil(4 * 132 / 128)
    assert cfg.num_splits(66, 8, 32768, 132) == 1     # 528 programs fill the chip unsplit: no merge
    assert cfg.num_splits(4, 8, 1, 132) == 1


def case_every_split_and_row_is_written(kernels, rng) -> None:
    seed = rng.randrange(2**31)
    batch = random_batch(BatchSpec((1, 1, 1), (1, 17, 90)), "cpu", seed)
    splits, (b, h, d) = 6, batch.q.shape
    part_out = torch.full((b, h, splits, d), float("nan"))
    part_lse = torch.full((b, h, splits), float("nan"))
    config = kernels.triton_decode.DecodeConfig(block_n=16)
    kernels.triton_decode.decode_partials(batch.q, batch.k_cache, batch.v_cache, batch.meta.block_tables,
                                          batch.meta.seq_lens, batch.scale, part_out, part_lse, config)
    assert not part_out.isnan().any() and not part_lse.isnan().any(), f"seed {seed}"
    assert torch.isneginf(part_lse[0, :, 1:]).all() and (part_out[0, :, 1:] == 0).all()
    out = torch.full_like(batch.q, float("nan"))
    kernels.triton_merge.merge_partials(part_out, part_lse, out)
    assert_matches_reference(out, batch, f"seed {seed}")


def case_prefill_writes_every_row(kernels, rng) -> None:
    seed = rng.randrange(2**31)
    batch = random_batch(BatchSpec((1, 20, 7), (9, 20, 40), 4, 2, 32), "cpu", seed)
    out = torch.full_like(batch.q, float("nan"))
    kernels.triton_prefill.prefill_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta,
                                             batch.scale, out, kernels.triton_prefill.PrefillConfig(32, 16))
    assert_matches_reference(out, batch, f"seed {seed}")


def case_merge_combines_disjoint_key_sets(kernels) -> None:
    """Prefix/suffix style: partials over two disjoint key ranges merge into attention over all keys."""
    q, k, v = torch.randn(3, 2, 16), torch.randn(40, 2, 16), torch.randn(40, 2, 16)
    scores = torch.einsum("thd,nhd->thn", q, k) * 0.25
    halves = (slice(0, 25), slice(25, 40))
    part_out = torch.stack([torch.einsum("thn,nhd->thd", scores[..., h].softmax(-1), v[h]) for h in halves], 2)
    part_lse = torch.stack([scores[..., h].logsumexp(-1) for h in halves], 2)
    out = torch.full((3, 2, 16), float("nan"))
    kernels.triton_merge.merge_partials(part_out, part_lse, out)
    whole = torch.einsum("thn,nhd->thd", scores.softmax(-1), v)
    assert_attention_close(out, whole, torch.tensor([0, 3]), tolerance(torch.float32))


def case_write_kv_matches_reference(kernels, rng) -> None:
    from engine.attention.reference import write_kv
    seed = rng.randrange(2**31)
    batch = random_batch(BatchSpec((3, 1, 5), (3, 30, 5), 4, 2, 32, dtype=torch.bfloat16), "cpu", seed)
    slots = batch.meta.slot_mapping.clone()
    slots[1] = -1
    ours = [batch.k_cache.clone(), batch.v_cache.clone()]
    theirs = [batch.k_cache.clone(), batch.v_cache.clone()]
    backend(kernels).write_kv(*ours, batch.new_k, batch.new_v, slots)
    write_kv(*theirs, batch.new_k, batch.new_v, slots)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), f"seed {seed}"


def case_bad_inputs_are_refused_clearly(kernels) -> None:
    batch = random_batch(BatchSpec((1, 1), (5, 9)), "cpu", 0)
    attn = backend(kernels)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        attn.forward(batch.q[:, :3], batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    with pytest.raises(ValueError, match="differs from the KV cache dtype"):
        attn.forward(batch.q.half(), batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    with pytest.raises(ValueError, match="head_dim must be one of"):
        attn.forward(batch.q[..., :24], batch.k_cache[..., :24], batch.v_cache[..., :24], batch.meta, 1.0)
    batch.meta.seq_lens = batch.meta.seq_lens.long()
    with pytest.raises(ValueError, match="meta.seq_lens must be int32"):
        attn.forward(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    with pytest.raises(ValueError, match="one slot per row"):
        attn.write_kv(batch.k_cache, batch.v_cache, batch.new_k, batch.new_v, batch.meta.slot_mapping[:1])


def split_decode(kernels, batch, splits: int, config, counters: torch.Tensor | None = None):
    """(out, part_out, part_lse) of one decode with ``splits`` splits, fused when counters are given.
    Every buffer starts as NaN, so an element left unwritten shows up."""
    (b, h, d), nan = batch.q.shape, float("nan")
    part_out, part_lse = torch.full((b, h, splits, d), nan), torch.full((b, h, splits), nan)
    out = torch.full_like(batch.q, nan)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.meta.block_tables, batch.meta.seq_lens, batch.scale,
            part_out, part_lse)
    if counters is None:
        kernels.triton_decode.decode_partials(*args, config)
        kernels.triton_merge.merge_partials(part_out, part_lse, out)
    else:
        kernels.triton_decode.decode_merged(*args, out, counters, config)
    return out, part_out, part_lse


@pytest.mark.parametrize("dtype,heads,kv_heads,dim,block_size", [(torch.float32, 4, 2, 32, 16),
                                                                 (torch.bfloat16, 8, 2, 16, 16),
                                                                 (torch.float32, 2, 2, 64, 32)])
@pytest.mark.parametrize("splits,merge_tile", [(2, 4096), (5, 64), (12, 4096), (12, 256)])
def case_fused_merge_equals_unfused(kernels, rng, dtype, heads, kv_heads, dim, block_size, splits,
                                    merge_tile) -> None:
    """Ragged lengths (1, block boundaries), empty splits (12 splits of at most 4 blocks + 6 keys),
    merges of one or several chunks (a small MERGE_TILE); counters back at zero; a second call
    gives the same bits."""
    seed = rng.randrange(2**31)
    seq_lens = ragged_seq_lens(rng, 6, 4 * block_size + 6, block_size)
    batch = random_batch(BatchSpec((1,) * 6, seq_lens, heads, kv_heads, dim, block_size, dtype), "cpu", seed,
                         strided_q=True)
    config = kernels.triton_decode.DecodeConfig(block_n=16, heads_fastest=rng.random() < 0.5)
    want, want_parts, want_lse = split_decode(kernels, batch, splits, config)
    counters = torch.zeros(6 * kv_heads + 5, dtype=torch.int32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.triton_decode, "MERGE_TILE", merge_tile)
        runs = [split_decode(kernels, batch, splits, config, counters) for _ in range(2)]
    msg = f"seed {seed}, seq_lens {seq_lens}, {config}"
    assert not counters.any(), msg
    for out, parts, lse in runs:
        assert torch.equal(parts, want_parts) and torch.equal(lse, want_lse), msg
        assert torch.equal(out, runs[0][0]), msg
        if dtype == torch.float32:
            torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6, msg=msg)
        else:  # the same fp32 sums up to rounding, then one rounding to bf16: at most one ulp apart
            torch.testing.assert_close(out.float(), want.float(), rtol=2**-7, atol=1e-6, msg=msg)
    assert_matches_reference(runs[0][0], batch, msg)


def case_backend_fused_and_unfused_agree_and_counters_grow(kernels, rng) -> None:
    """Through the backend: fused (default) and unfused decode agree; a larger batch grows the counter
    buffer (the old one is kept for graphs captured with it); every buffer is zero after use."""
    seed = rng.randrange(2**31)
    fused, unfused = backend(kernels), backend(kernels, fused_merge=False)
    fused.counters = kernels.triton_backend.SplitCounters(min_size=4)
    for seq_lens in ((50, 1), ragged_seq_lens(rng, 7, 50, 16)):
        batch = random_batch(BatchSpec((1,) * len(seq_lens), seq_lens, 4, 2, 32), "cpu", seed)
        args = (batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
        torch.testing.assert_close(fused.forward(*args), unfused.forward(*args), rtol=1e-6, atol=1e-6,
                                   msg=f"seed {seed}")
    buffers = fused.counters.buffers[torch.device("cpu")]
    assert [b.numel() for b in buffers] == [4, 14] and not any(b.any() for b in buffers)
    assert fused.counters.get(torch.device("cpu"), 9) is buffers[-1]


def case_decode_merged_refuses_bad_counters(kernels) -> None:
    batch = random_batch(BatchSpec((1, 1), (5, 9)), "cpu", 0)
    config = kernels.triton_decode.DecodeConfig(block_n=16)
    for counters in (torch.zeros(3, dtype=torch.int32), torch.zeros(4, dtype=torch.int64)):
        with pytest.raises(ValueError, match="int32 counters for 2 x 2"):
            split_decode(kernels, batch, 3, config, counters)
