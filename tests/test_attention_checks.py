"""The kernel tests' comparison (tests/attention_checks.py) fails a kernel that gets one sequence
or one head wrong, which the whole-batch relative error let through."""

from __future__ import annotations

import pytest
import torch

from benchmarks.paged_batches import BatchSpec, random_batch, relative_error
from tests.attention_checks import assert_matches_reference, reference_output, tolerance


@pytest.fixture(scope="module")
def decode_batch():
    """As tests/gpu/test_attention_kernels.py draws them: 12 ragged lengths up to 3000 and one of 20-33K
    (fewer heads: the float64 reference runs on the CPU). A correct bf16 kernel's output is the
    reference rounded to bf16."""
    lens = (1, 16, 17, 31, 32, 3000, 2519, 731, 1402, 88, 2950, 1777, 27113)
    batch = random_batch(BatchSpec((1,) * len(lens), lens, 4, 2, 32, 16, torch.bfloat16), "cpu", seed=5)
    ref = reference_output(batch)
    return batch, ref, ref.to(torch.bfloat16)


def test_a_correctly_rounded_output_passes(decode_batch) -> None:
    batch, ref, good = decode_batch
    assert_matches_reference(good, batch, ref=ref)


def test_a_zeroed_long_sequence_fails_though_the_whole_batch_error_is_below_1e_2(decode_batch) -> None:
    batch, ref, good = decode_batch
    bad = good.clone()
    bad[-1] = 0  # the 27113-token sequence (one decode row)
    assert relative_error(bad, ref) < 1e-2 < tolerance(torch.bfloat16)  # the old whole-batch check passed it
    with pytest.raises(AssertionError, match=r"sequence 12 head \d: relative error 1.00e\+00"):
        assert_matches_reference(bad, batch, ref=ref)


def test_one_wrong_head_or_a_nan_fails(decode_batch) -> None:
    batch, ref, good = decode_batch
    swapped = good.clone()
    swapped[5, 1] = good[5, 0]  # head 1 of sequence 5 reads head 0's output
    with pytest.raises(AssertionError, match="sequence 5 head 1"):
        assert_matches_reference(swapped, batch, ref=ref)
    nan = good.clone()
    nan[3, 2, 7] = float("nan")
    with pytest.raises(AssertionError, match="sequence 3 head 2: relative error nan"):
        assert_matches_reference(nan, batch, ref=ref)


def test_prefill_rows_count_with_their_sequence() -> None:
    """A mixed batch: an error in the last query row of a prefill chunk is that sequence's."""
    batch = random_batch(BatchSpec((1, 20, 7), (9, 20, 40)), "cpu", seed=3)
    ref = reference_output(batch)
    bad = ref.float().clone()
    bad[20] *= 1.5  # the last of sequence 1's 20 rows (rows 1-20)
    with pytest.raises(AssertionError, match=r"sequence 1 head \d"):
        assert_matches_reference(bad, batch, ref=ref)
    assert_matches_reference(ref.float(), batch, ref=ref)
