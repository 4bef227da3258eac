"""The engine's handoff hooks: prefill on one engine, copy the KV blocks, decode on another."""

from __future__ import annotations

import dataclasses

import pytest

from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine

PROMPTS = [[0, 42, 385, 81, 14, 349, 400, 3] * 5, [0, 7, 8, 9], list(range(3, 40))]


def disaggregated(prefill, decode, prompt, params):
    rid = prefill.add_request(None, prompt, dataclasses.replace(params, max_tokens=1, stop=()),
                              hold_kv=True)
    first = []
    while prefill.has_unfinished():
        first += [t for d in prefill.step() for t in d.new_token_ids]
    src = prefill.held_kv(rid)
    state = src.generator.get_state() if src.generator is not None else None
    dst_blocks = decode.add_prefilled(rid, prompt, first, params, generator_state=state)
    n = len(dst_blocks)
    decode.runner.kv_cache[:, :, dst_blocks] = prefill.runner.kv_cache[:, :, src.block_ids[:n]]
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


def test_no_room_returns_none_and_abort_frees_reserved_blocks(tiny_model):
    decode = make_engine(tiny_model, num_blocks=4, block_size=4)
    params = SamplingParams(max_tokens=4, temperature=0)
    blocks = decode.add_prefilled("small", [1, 2, 3, 4, 5], [6], params)
    assert len(blocks) == 2 and decode.kv.num_free_blocks == 2
    assert decode.add_prefilled("big", list(range(3, 15)), [5], params) is None
    assert decode.kv.num_free_blocks == 2
    decode.abort_request("small")
    assert decode.kv.num_free_blocks == 4
