"""The engine's handoff hooks: prefill on one engine, copy the KV blocks, decode on another."""

from __future__ import annotations

import dataclasses

import pytest

from engine.sampling_params import SamplingParams
from tests.engine.conftest import BOTH_SCHEDULINGS, make_engine

pytestmark = BOTH_SCHEDULINGS

PROMPTS = [[0, 42, 385, 81, 14, 349, 400, 3] * 5, [0, 7, 8, 9], list(range(3, 40))]


def disaggregated(prefill, decode, prompt, params, hand_over_state: bool = True):
    """Tokens of ``prompt``: the first from ``prefill``, the rest from ``decode`` after its KV is copied
    over (with the sampler's generator state unless ``hand_over_state`` is False)."""
    rid = prefill.add_request(None, prompt, dataclasses.replace(params, max_tokens=1, stop=()),
                              hold_kv=True)
    first = []
    while prefill.has_unfinished():
        first += [t for d in prefill.step() for t in d.new_token_ids]
    src = prefill.held_kv(rid)
    state = src.generator.get_state() if src.generator is not None and hand_over_state else None
    reservation = decode.add_prefilled(rid, prompt, first, params, generator_state=state)
    skip = reservation.num_cached_blocks
    src_blocks = src.block_ids[skip:skip + len(reservation.block_ids)]
    decode.runner.kv_cache[:, :, reservation.block_ids] = prefill.runner.kv_cache[:, :, src_blocks]
    prefill.release_kv(rid)
    decode.kv_arrived(rid)
    tokens = list(first)
    while decode.has_unfinished():
        tokens += [t for d in decode.step() for t in d.new_token_ids]
    return tokens


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
    SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=11, ignore_eos=True),
])
def test_prefill_then_decode_elsewhere_equals_one_engine(tiny_model, params):
    single = make_engine(tiny_model)
    prefill = make_engine(tiny_model, detokenize=False)
    decode = make_engine(tiny_model, block_size=16, detokenize=False)
    for prompt in PROMPTS:
        expected = single.generate([prompt], params)[0].token_ids
        assert disaggregated(prefill, decode, prompt, params) == expected
    for engine in (prefill, decode):
        assert engine.kv.num_free_blocks == engine.runner.num_blocks
        assert not engine.held and not engine.awaiting_kv


def test_seeded_decode_elsewhere_needs_the_sampler_state(tiny_model):
    """What makes the seeded case above able to fail: without the prefill side's generator state the
    decode side draws other tokens, and greedy decoding gives others again."""
    params = SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=11, ignore_eos=True)
    single = make_engine(tiny_model)
    prefill, decode = make_engine(tiny_model, detokenize=False), make_engine(tiny_model, detokenize=False)
    for prompt in PROMPTS:
        expected = single.generate([prompt], params)[0].token_ids
        assert disaggregated(prefill, decode, prompt, params, hand_over_state=False) != expected
        assert single.generate([prompt], dataclasses.replace(params, temperature=0))[0].token_ids != expected


def test_decode_side_prefix_cache_skips_blocks_already_there(tiny_model):
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    single = make_engine(tiny_model)
    prefill = make_engine(tiny_model, detokenize=False, prefix_caching=True)
    decode = make_engine(tiny_model, detokenize=False, prefix_caching=True)
    shared = list(range(3, 51))  # three full blocks
    for tail in ([7, 8, 9], [10, 11], [12] * 20):
        prompt = shared + tail
        assert disaggregated(prefill, decode, prompt, params) == single.generate([prompt], params)[0].token_ids
    rid = prefill.add_request(None, shared + [99], dataclasses.replace(params, max_tokens=1), hold_kv=True)
    while prefill.has_unfinished():
        prefill.step()
    first = prefill.held_kv(rid).output_token_ids
    reservation = decode.add_prefilled(rid, shared + [99], first, params)
    assert reservation.num_cached_blocks == 3 and len(reservation.block_ids) == 1
    decode.abort_request(rid)
    prefill.release_kv(rid)


def test_no_room_returns_none_and_abort_frees_reserved_blocks(tiny_model):
    decode = make_engine(tiny_model, num_blocks=4, block_size=4)
    params = SamplingParams(max_tokens=4, temperature=0)
    blocks = decode.add_prefilled("small", [1, 2, 3, 4, 5], [6], params).block_ids
    assert len(blocks) == 2 and decode.kv.num_free_blocks == 2
    assert decode.add_prefilled("big", list(range(3, 15)), [5], params) is None
    assert decode.kv.num_free_blocks == 2
    decode.abort_request("small")
    assert decode.kv.num_free_blocks == 4
