"""Segment reuse on CUDA (Triton attention, CUDA graphs, overlapped scheduling): the exactness
checks of tests/segments on the device, and a fill that reuses."""

from __future__ import annotations

import pytest
import torch

from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse
from tests.segments.conftest import make_engine, run, tokens

SEG, Q = tokens(100, 1), tokens(9, 2)
PARAMS = SamplingParams(max_tokens=12, temperature=0, logprobs=3, ignore_eos=True)


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def span(prefix: list[int]) -> tuple[tuple[int, int], ...]:
    return ((len(prefix), len(prefix) + len(SEG)),)


def test_layer0_keys_and_the_exactness_switch_on_cuda(tiny_model):
    engine = make_engine(tiny_model, device="cuda", num_blocks=512, max_batched=2048)
    short, long = tokens(37, 3), tokens(1500, 4)
    run(engine, short + SEG + Q, SegmentReuse(span(short)))
    exact = run(engine, long + SEG + Q, SegmentReuse(span(long), recompute_ratio=1.0), PARAMS)
    first, second = next(iter(engine.segments.store.entries.values())).anchors
    moved = engine.segments.rerotate(first.kv[0, 0], first.start, second.start)
    assert (moved - second.kv[0, 0]).abs().max().item() < 1e-5  # fp32: layer 0 exact at position 1500
    plain = run(make_engine(tiny_model, device="cuda", num_blocks=512, max_batched=2048), long + SEG + Q,
                params=PARAMS)
    assert exact.num_reused_segment_tokens == 0
    assert exact.token_ids == plain.token_ids and exact.logprobs == plain.logprobs


def test_reuse_on_cuda_fills_and_same_prefix_copies_exactly(tiny_model):
    engine = make_engine(tiny_model, device="cuda")
    p1, p2 = tokens(37, 5), tokens(53, 6)
    run(engine, p1 + SEG + Q, SegmentReuse(span(p1)))
    same = run(engine, p1 + SEG + tokens(6, 7), SegmentReuse(span(p1)), PARAMS)
    full = run(make_engine(tiny_model, device="cuda"), p1 + SEG + tokens(6, 7), params=PARAMS)
    assert same.num_reused_segment_tokens == 100 and same.token_ids == full.token_ids
    reused = run(engine, p2 + SEG + Q, SegmentReuse(span(p2), recompute_ratio=0.1), PARAMS)
    assert reused.num_reused_segment_tokens == 90 and len(reused.token_ids) == 12
    assert engine.segments.stats().hits == 2 and engine.kv.num_free_blocks == engine.runner.num_blocks
