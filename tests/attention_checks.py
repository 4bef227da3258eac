"""What the attention kernel tests (tests/gpu, the interpreter suites) share: a fixed random
generator per test, the float64 references, random lengths, prefix trees and partials, and the
comparison of a kernel's output with a reference.

The comparison is per (sequence, head), not over the whole batch: in a decode batch a long
sequence's output has a small norm (an average of many value rows), so a kernel that returned
zeros for the one 20-33K-token sequence among a dozen short ones scored below 1e-2 over the
whole batch. Per (sequence, head) any wrong sequence scores about 1.
"""

from __future__ import annotations

import random
import zlib

import pytest
import torch

from benchmarks.paged_batches import PagedBatch
from benchmarks.shared_prefix_batches import PrefixTree

# float32 kernels sum up to ~33K keys in tiles and merge split partials: the whole-batch check
# this replaces allowed them 1e-5 (and they passed it on H100/H200)
FP32_SUMMATION = 1e-5


def tolerance(dtype: torch.dtype) -> float:
    """Largest relative error of one (sequence, head) of a kernel output in ``dtype``: rounding the
    output to ``dtype`` and the probabilities to the value dtype (the PV product) each cost up to
    half an ulp, so 2 ulps leave room; float32 is bounded by its summation instead."""
    return 2 * torch.finfo(dtype).eps + FP32_SUMMATION


def seeded_rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded from the test's id: the same inputs on every run, other inputs for each
    parametrized case. The seed is printed, so pytest shows it with a failing test's report."""
    seed = zlib.crc32(request.node.nodeid.encode())
    print(f"rng seed {seed} ({request.node.nodeid})")
    return random.Random(seed)


def sequence_errors(out: torch.Tensor, ref: torch.Tensor, query_start_loc: torch.Tensor) -> torch.Tensor:
    """``||out - ref|| / ||ref||`` over each sequence's query rows of each head: [num_seqs, heads],
    float64 on the CPU; NaN where ``out`` holds NaN (a zero reference gives 0 or inf)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    starts = query_start_loc.detach().long().cpu()
    seq_of_row = torch.repeat_interleave(torch.arange(len(starts) - 1), starts.diff())
    sums = torch.zeros(2, len(starts) - 1, out.shape[1], dtype=torch.float64)
    sums[0].index_add_(0, seq_of_row, (out - ref).square().sum(-1))
    sums[1].index_add_(0, seq_of_row, ref.square().sum(-1))
    return sums[0].sqrt() / sums[1].sqrt().clamp_min(torch.finfo(torch.float64).tiny)


def assert_attention_close(out: torch.Tensor, ref: torch.Tensor, query_start_loc: torch.Tensor,
                           tol: float, where: str = "") -> None:
    """Every (sequence, head) of ``out`` within ``tol`` of ``ref`` (NaN fails); the message names the
    worst pair and ``where`` (seeds, lengths) to reproduce it."""
    errors = sequence_errors(out, ref, query_start_loc)
    over = ~(errors < tol)
    if over.any():
        worst = torch.where(over, errors.nan_to_num(float("inf")), -1.0).argmax()
        seq, head = divmod(int(worst), errors.shape[1])
        raise AssertionError(f"sequence {seq} head {head}: relative error {errors[seq, head]:.2e} >= {tol:.2e} "
                             f"({int(over.sum())} of {over.numel()} (sequence, head) pairs over) {where}")


def assert_matches_reference(out: torch.Tensor, batch: PagedBatch, where: str = "",
                             ref: torch.Tensor | None = None) -> None:
    """``out`` has q's shape and dtype and every (sequence, head) is within ``tolerance(dtype)`` of the
    float64 reference (``reference_output``, or ``ref``)."""
    assert out.shape == batch.q.shape and out.dtype == batch.q.dtype, (out.shape, out.dtype, where)
    ref = reference_output(batch) if ref is None else ref
    where = f"{where} seq_lens {batch.meta.seq_lens.tolist()}"
    assert_attention_close(out, ref, batch.meta.query_start_loc, tolerance(batch.q.dtype), where)


def assert_rows_close(out: torch.Tensor, ref: torch.Tensor, tol: float, where: str = "") -> None:
    """``assert_attention_close`` with each row of ``out`` [N, H, D] its own sequence (merges)."""
    assert_attention_close(out, ref, torch.arange(out.shape[0] + 1), tol, where)


def reference_output(batch: PagedBatch) -> torch.Tensor:
    """The torch reference in float64 on the batch's own caches (spare NaN blocks are never read)."""
    from engine.attention.reference import paged_attention
    return paged_attention(batch.q.double(), batch.k_cache.double(), batch.v_cache.double(),
                           batch.meta, batch.scale)


def shared_reference_output(batch: PagedBatch) -> torch.Tensor:
    """The torch shared-prefix decomposition in float64 (``shared_prefix.reference``)."""
    from engine.attention.shared_prefix.reference import shared_prefix_decode
    return shared_prefix_decode(batch.q.double(), batch.k_cache.double(), batch.v_cache.double(), batch.meta,
                                batch.meta.shared, batch.scale)


def ragged_seq_lens(rng: random.Random, count: int, max_len: int, block_size: int) -> tuple[int, ...]:
    """``count`` lengths in [1, max_len]: 1, block-boundary values, the rest uniform, shuffled."""
    edges = [n for n in (1, block_size, block_size + 1, 2 * block_size - 1, 2 * block_size, max_len)
             if n <= max_len]
    lens = edges[:count] + [rng.randint(1, max_len) for _ in range(count - len(edges))]
    rng.shuffle(lens)
    return tuple(lens)


def nested_tree(rng: random.Random, num_seqs: int, system: int, fewshot: int, groups: int, unshared: int,
                max_suffix: int, block_size: int) -> PrefixTree:
    """A system prompt of ``system`` tokens shared by all but ``unshared`` sequences, ``groups`` few-shot
    nodes of ``fewshot`` tokens below it (each sequence in one group, or directly under the system
    prompt when ``groups`` is 0), suffixes uniform in [1, max_suffix]. Lengths are rounded to blocks."""
    blocks = lambda n: max(1, round(n / block_size)) * block_size  # noqa: E731
    nodes = [(-1, blocks(system))] + [(0, blocks(fewshot)) for _ in range(groups)]
    seqs = [(rng.randint(1, groups) if groups else 0, rng.randint(1, max_suffix))
            for _ in range(num_seqs - unshared)]
    seqs += [(-1, rng.randint(1, max_suffix + system)) for _ in range(unshared)]
    rng.shuffle(seqs)
    return PrefixTree(tuple(nodes), tuple(seqs))


def random_partials(n: int, heads: int, parts: int, dim: int, seed: int,
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Partials ``(part_out [n, heads, parts, dim], part_lse [n, heads, parts])`` for merge tests: strided
    views of larger buffers, lse spread over +-20, ~30% empty partials (lse -inf, out NaN: never to be
    read), row 0 without any partial, the last row with only its last partial."""
    gen = torch.Generator(device=device).manual_seed(seed)
    part_out = torch.randn(n, heads + 1, parts + 2, dim, generator=gen, device=device)[:, 1:, 1:parts + 1]
    part_lse = (torch.randn(n, heads, parts + 1, generator=gen, device=device) * 20)[..., :parts]
    empty = torch.rand(n, heads, parts, generator=gen, device=device) < 0.3
    empty[0] = True
    empty[-1] = True
    empty[-1, :, -1] = n == 1  # a single row is the empty one
    part_lse[empty] = float("-inf")
    part_out[empty] = float("nan")
    return part_out, part_lse


def merge_reference(part_out: torch.Tensor, part_lse: torch.Tensor) -> torch.Tensor:
    """``triton_merge.merge_partials`` in float64: empty partials (lse -inf) weigh 0 whatever their
    values (even NaN), rows without any partial give 0."""
    lse, filled = part_lse.double(), part_lse > float("-inf")
    top = lse.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weight = torch.where(filled, (lse - top).exp(), 0.0)
    total = weight.sum(-1, keepdim=True)
    merged = (torch.where(filled[..., None], part_out.double(), 0.0) * weight[..., None]).sum(-2)
    return merged / torch.where(total > 0, total, 1.0)
