"""Segment reuse in one engine: exact where it must be, filled and counted where it may be."""

from __future__ import annotations

import pytest
import torch

from engine.config import SegmentConfig
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.segments.anchors import probe_weights
from engine.segments.rerotate import Rerotator
from engine.segments.spec import SegmentReuse, segment_hash
from tests.segments.conftest import GREEDY, make_engine, run, tokens

BOTH = pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
SEG, Q1, Q2 = tokens(100, 1), tokens(9, 2), tokens(6, 3)
P1, P2 = tokens(37, 4), tokens(53, 5)


def span(prefix: list[int]) -> tuple[tuple[int, int], ...]:
    return ((len(prefix), len(prefix) + len(SEG)),)


@BOTH
def test_same_prefix_segment_is_copied_exactly(tiny_model, async_scheduling):
    """Prefix caching off: the segment after the same prefix comes from the store unchanged, and
    the tokens are those of a full prefill and of a prefix-cache hit."""
    engine = make_engine(tiny_model, async_scheduling=async_scheduling)
    first = run(engine, P1 + SEG + Q1, SegmentReuse(span(P1)))
    assert first.num_reused_segment_tokens == 0 and engine.segments.stats().anchors_stored == 1
    reused = run(engine, P1 + SEG + Q2, SegmentReuse(span(P1)))
    assert reused.num_reused_segment_tokens == 100 and reused.num_cached_tokens == 100
    stats = engine.segments.stats()
    assert (stats.lookups, stats.hits, stats.exact_hits, stats.reused_tokens) == (1, 1, 1, 100)
    full = run(make_engine(tiny_model), P1 + SEG + Q2)
    cached_engine = make_engine(tiny_model, prefix_caching=True)
    run(cached_engine, P1 + SEG + Q1)
    prefix_hit = run(cached_engine, P1 + SEG + Q2)
    assert prefix_hit.num_cached_tokens == 128
    assert reused.token_ids == full.token_ids == prefix_hit.token_ids
    assert [lp.logprob for lp in reused.logprobs] == [lp.logprob for lp in full.logprobs]


@BOTH
def test_recompute_ratio_one_is_identical_to_no_reuse(tiny_model, async_scheduling):
    engine = make_engine(tiny_model, async_scheduling=async_scheduling)
    run(engine, P1 + SEG + Q1, SegmentReuse(span(P1)))
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=3)
    exact = run(engine, P2 + SEG + Q1, SegmentReuse(span(P2), recompute_ratio=1.0), params)
    plain = run(make_engine(tiny_model, async_scheduling=async_scheduling), P2 + SEG + Q1, params=params)
    assert exact.num_reused_segment_tokens == 0
    assert exact.token_ids == plain.token_ids and exact.logprobs == plain.logprobs
    assert len(engine.segments.store.peek(segment_hash(SEG)).anchors) == 2  # computed in full: one more anchor


@BOTH
def test_reuse_after_another_prefix_never_reaches_the_prefix_cache(tiny_model, async_scheduling):
    engine = make_engine(tiny_model, prefix_caching=True, async_scheduling=async_scheduling)
    run(engine, P1 + SEG + Q1, SegmentReuse(span(P1)))
    reused = run(engine, P2 + SEG + Q1, SegmentReuse(span(P2), recompute_ratio=0.1))
    assert reused.num_reused_segment_tokens == 90  # 10 recomputed
    assert reused.num_cached_tokens == 90
    again = run(engine, P2 + SEG + Q1)  # the same prompt without reuse: only exact blocks are hits
    assert again.num_cached_tokens == 48 + 0  # P2's 3 full blocks; the approximated ones were never offered
    assert again.token_ids == run(make_engine(tiny_model), P2 + SEG + Q1).token_ids


def test_probe_weights_pick_the_anchor_whose_context_matches():
    g = torch.Generator().manual_seed(0)
    fresh = torch.randn(2, 4, 2, 8, generator=g)
    probes = torch.stack([fresh + 0.5 * torch.randn(2, 4, 2, 8, generator=g), fresh.clone(),
                          fresh + 0.3 * torch.randn(2, 4, 2, 8, generator=g)])
    w = probe_weights(fresh, probes, temperature=0.1)
    assert w.shape == (3, 2, 2) and torch.allclose(w.sum(0), torch.ones(2, 2))
    assert (w[1] > 0.99).all()


def test_anchor_offsets_move_the_estimate_towards_the_nearest_context(tiny_model):
    """Two anchors (after P1 and after P2); a new prefix that is P2 with its first token changed:
    the blended KV is closer to the full computation than the first anchor re-rotated."""
    engine = make_engine(tiny_model)
    for p in (P1, P2):
        run(engine, p + SEG + Q1, SegmentReuse(span(p), recompute_ratio=1.0))
    near = [7] + P2[1:]
    truth = make_engine(tiny_model)
    run(truth, near + SEG + Q1, SegmentReuse(span(near)))
    true_kv = next(iter(truth.segments.store.entries.values())).anchors[0].kv
    errors = {}
    for offsets in (False, True):
        rid = engine.add_request(None, near + SEG + Q1, SamplingParams(max_tokens=1), hold_kv=True,
                                 segments=SegmentReuse(span(near), recompute_ratio=0.1, anchor_offsets=offsets))
        while engine.has_unfinished():
            engine.step()
        held = engine.held_kv(rid)
        kv = engine.segments.kv.read(held.block_ids, 53, 153)
        errors[offsets] = (kv[1:, :, 10:] - true_kv[1:, :, 10:]).abs().mean().item()
        engine.release_kv(rid)
    assert errors[True] < 0.5 * errors[False], errors


def test_preemption_under_a_small_cache_replans(tiny_model):
    """Four requests reusing one segment in 24 blocks: some are preempted and plan again; all
    finish and every block comes back."""
    engine = make_engine(tiny_model, num_blocks=24, max_batched=64)
    run(engine, P1 + SEG + Q1, SegmentReuse(span(P1)))
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts = [tokens(20 + 3 * i, 10 + i) + SEG + Q2 for i in range(4)]
    ids = [engine.add_request(None, p, params, segments=SegmentReuse(((len(p) - 106, len(p) - 6),)))
           for p in prompts]
    outputs = {rid: [] for rid in ids}
    while engine.has_unfinished():
        for d in engine.step():
            outputs[d.request_id] += d.new_token_ids
    assert engine.num_preemptions > 0
    assert all(len(v) == 8 for v in outputs.values())
    assert engine.segments.stats().hits >= 4
    assert engine.kv.num_free_blocks == 24


def test_store_keeps_its_byte_budget_and_reports_events(tiny_model):
    per_segment = 2 * 2 * 100 * 2 * 16 * 4  # layers, K/V, tokens, KV heads, head_dim, fp32
    engine = make_engine(tiny_model, segments=SegmentConfig(store_bytes=2 * per_segment))
    segs = [tokens(100, 20 + i) for i in range(3)]
    for s in segs:
        run(engine, P1 + s + Q1, SegmentReuse(span(P1)))
    store = engine.segments.store
    assert len(store) == 2 and store.nbytes == 2 * per_segment
    events = store.drain_events()
    assert [k for k, _ in events.stored] == [segment_hash(s) for s in segs]
    assert events.evicted == [segment_hash(segs[0])]


def test_salts_scope_segments(tiny_model):
    engine = make_engine(tiny_model)
    engine.add_request(None, P1 + SEG + Q1, GREEDY, cache_salt="a", segments=SegmentReuse(span(P1)))
    while engine.has_unfinished():
        engine.step()
    engine.add_request(None, P2 + SEG + Q1, GREEDY, cache_salt="b", segments=SegmentReuse(span(P2)))
    while engine.has_unfinished():
        engine.step()
    assert engine.segments.stats().hits == 0 and len(engine.segments.store) == 2


@pytest.mark.parametrize("reuse, message", [
    (SegmentReuse(((5, 3),)), "not a token range"),
    (SegmentReuse(((0, 50), (40, 90))), "must not overlap"),
    (SegmentReuse(((0, 50),), recompute_ratio=1.5), "recompute_ratio"),
    (SegmentReuse(((0, 500),)), "not a token range"),
])
def test_bad_segments_are_refused(tiny_model, reuse, message):
    engine = make_engine(tiny_model)
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request(None, P1 + SEG + Q1, GREEDY, segments=reuse)


class OffByOne(Rerotator):
    """A deliberately wrong re-rotation: keys land one position past where they belong."""

    def cos_sin(self, old_start: int, new_start: int, length: int):
        return super().cos_sin(old_start, new_start + 1, length)


def test_the_comparisons_can_fail(tiny_model):
    """What the exactness tests compare is sensitive: recomputing 90% (not 100%) of the segment
    already changes the logprobs, and a re-rotation off by one position changes them again."""
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=2)
    plain = run(make_engine(tiny_model), P2 + SEG + Q1, params=params)
    results = {}
    for name, ratio, rerotator in (("r=0.9", 0.9, None), ("r=0", 0.0, None), ("r=0 off by one", 0.0, OffByOne)):
        engine = make_engine(tiny_model)
        if rerotator is not None:
            engine.segments.rerotate = rerotator(engine.model_config)
        run(engine, P1 + SEG + Q1, SegmentReuse(span(P1)))
        results[name] = run(engine, P2 + SEG + Q1, SegmentReuse(span(P2), recompute_ratio=ratio), params)
        assert results[name].num_reused_segment_tokens == 100 - round(100 * ratio)
    assert results["r=0.9"].logprobs != plain.logprobs
    assert results["r=0 off by one"].logprobs != results["r=0"].logprobs
