"""Sampling parameters and stop conditions, end to end through the engine."""

from __future__ import annotations

import pytest
import torch

from engine.sampler import apply_top_k, apply_top_p
from engine.sampling_params import SamplingParams
from tests.engine.conftest import BOTH_SCHEDULINGS, make_engine

pytestmark = BOTH_SCHEDULINGS

PROMPT = [0, 42, 385, 81, 14, 349, 400, 3]


@pytest.fixture(scope="module")
def engine(tiny_model, async_scheduling):
    return make_engine(tiny_model)


def run(engine, **kw):
    kw.setdefault("max_tokens", 16)
    return engine.generate([PROMPT], SamplingParams(**kw))[0]


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = run(engine, temperature=0, ignore_eos=True).token_ids
    assert run(engine, temperature=1.5, top_k=1, seed=3, ignore_eos=True).token_ids == greedy
    assert run(engine, temperature=1.5, top_p=1e-6, seed=3, ignore_eos=True).token_ids == greedy


def test_seed_reproducible_and_different_seeds_differ(engine):
    a = run(engine, temperature=1.0, seed=7, ignore_eos=True).token_ids
    b = run(engine, temperature=1.0, seed=7, ignore_eos=True).token_ids
    c = run(engine, temperature=1.0, seed=8, ignore_eos=True).token_ids
    assert a == b and a != c


def test_max_tokens_and_finish_reason(engine):
    r = run(engine, temperature=0, max_tokens=5, ignore_eos=True)
    assert len(r.token_ids) == 5 and r.finish_reason.value == "length"


def test_stop_token_ids_end_the_output_and_are_kept(engine):
    greedy = run(engine, temperature=0, ignore_eos=True).token_ids
    stop = greedy[3]
    r = run(engine, temperature=0, stop_token_ids=(stop,))
    assert r.token_ids == greedy[:greedy.index(stop) + 1]
    assert r.finish_reason.value == "stop"


def test_stop_string_cuts_text(engine):
    full = run(engine, temperature=0, ignore_eos=True, max_tokens=24)
    stop = full.text[5:8]
    r = run(engine, temperature=0, ignore_eos=True, max_tokens=24, stop=(stop,))
    assert r.finish_reason.value == "stop"
    assert r.text == full.text[:full.text.index(stop)]
    assert stop not in r.text


def test_min_tokens_suppresses_stop_tokens(engine):
    greedy = run(engine, temperature=0, ignore_eos=True).token_ids
    r = run(engine, temperature=0, stop_token_ids=(greedy[0],), min_tokens=4, max_tokens=6)
    assert len(r.token_ids) >= 4
    assert greedy[0] not in r.token_ids[:4]


def test_logprobs_are_log_softmax_of_the_sampled_token(engine):
    r = run(engine, temperature=0, ignore_eos=True, logprobs=3, max_tokens=4)
    for tok, lp in zip(r.token_ids, r.logprobs):
        assert lp.token_id == tok and lp.top[0][0] == tok
        assert lp.logprob == pytest.approx(lp.top[0][1]) and lp.logprob <= 0


def test_incremental_text_equals_full_decode(engine):
    r = run(engine, temperature=0.8, seed=1, ignore_eos=True, max_tokens=40)
    assert r.text == engine.tokenizer.decode(r.token_ids)


def test_top_k_and_top_p_masks():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    k = apply_top_k(logits, [2, 0])
    assert torch.isinf(k[0]).tolist() == [True, False, False, True]
    assert not torch.isinf(k[1]).any()
    p = apply_top_p(logits, [0.5, 0.99])
    assert torch.isinf(p[0]).tolist() == [True, False, True, True]
    assert not torch.isinf(p[1, 2])
