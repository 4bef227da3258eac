"""Greedy tokens identical to transformers' generate, logprobs close, on every supported variant.

Two checkpoint styles: what the installed transformers' ``save_pretrained`` writes
(tests/hf_checkpoints.py: ``rope_parameters``, ``dtype``, ``head_dim``, ``layer_types``; sharp
attention, so rope matters, and an EOS the model emits) and engine/tiny_model.py's older style
(top-level ``rope_theta`` / ``rope_scaling``, ``torch_dtype``). Long prompts, natural EOS stops
and min_tokens are compared too, and a checkpoint read with a wrong rope must give other tokens:
these tests can fail.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.outputs import FinishReason
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.tiny_model import TinyModelSpec
from engine.tokenizer import Tokenizer
from tests.engine.conftest import make_engine
from tests.hf_checkpoints import EOS_STEP, LONG_PROMPT, PROBE, TOKENIZER_EOS, VARIANTS, HFCheckpoint, edit_config

OLD_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}
OLD_STYLE = {
    "old-llama-mqa-bias-sharded": TinyModelSpec(hidden_size=128, num_kv_heads=1, attention_bias=True, num_shards=3),
    "old-llama3-rope": TinyModelSpec(rope_scaling=OLD_LLAMA3_ROPE, extra={"rope_theta": 500000.0}),
    "old-qwen2-tied": TinyModelSpec(architecture="qwen2", tie_word_embeddings=True),
}
PROMPTS = ("Hello, world! How are you today?",
           "The prefill pool computes the prompt on fast GPUs and writes its cache into the store")
NEW_TOKENS = 16
NUM_BLOCKS = 160


@pytest.fixture(scope="module")
def checkpoint(request, hf_checkpoint, tiny_model_factory) -> HFCheckpoint:
    name = request.param
    if name in VARIANTS:
        return hf_checkpoint(name)
    return HFCheckpoint(tiny_model_factory(OLD_STYLE[name]), eos_token_id=TOKENIZER_EOS)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return make_engine(checkpoint.path, num_blocks=NUM_BLOCKS)


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kwargs)


@pytest.mark.parametrize("checkpoint", sorted(VARIANTS) + sorted(OLD_STYLE), indirect=True)
def test_greedy_tokens_and_logprobs_match_transformers(checkpoint, engine):
    prompts = [Tokenizer(checkpoint.path).encode(p) for p in PROMPTS] + [PROBE]
    assert engine.eos_token_ids == checkpoint.eos_token_ids
    results = engine.generate(prompts, greedy(NEW_TOKENS, ignore_eos=True, logprobs=5))
    for ids, ours in zip(prompts, results):
        ref_tokens, ref_logprobs = checkpoint.greedy_logprobs(ids, NEW_TOKENS)
        assert ours.token_ids == ref_tokens
        for step, lp in enumerate(ours.logprobs):
            top_ids = [t for t, _ in lp.top]
            assert torch.allclose(torch.tensor([v for _, v in lp.top]), ref_logprobs[step, top_ids],
                                  atol=1e-4), f"step {step}"
            assert abs(lp.logprob - float(ref_logprobs[step, lp.token_id])) < 1e-4


@pytest.mark.parametrize("checkpoint", sorted(VARIANTS), indirect=True)
def test_long_prompt_natural_eos_and_min_tokens_match_transformers(checkpoint, engine):
    """A 1.1K-token prompt; PROBE, which ends on EOS; PROBE with min_tokens holding EOS back."""
    held = EOS_STEP + 4
    long, stopped, min_tokens = engine.generate(
        [LONG_PROMPT, PROBE, PROBE], [greedy(6, ignore_eos=True), greedy(24), greedy(24, min_tokens=held)])
    assert long.token_ids == checkpoint.greedy(LONG_PROMPT, 6, stop_on_eos=False)
    assert stopped.token_ids == checkpoint.greedy(PROBE, 24)
    assert stopped.token_ids[-1] == checkpoint.eos_token_id and len(stopped.token_ids) == EOS_STEP + 1
    assert stopped.finish_reason == FinishReason.STOP
    assert min_tokens.token_ids == checkpoint.greedy(PROBE, 24, min_new_tokens=held)
    assert checkpoint.eos_token_id not in min_tokens.token_ids[:held] and len(min_tokens.token_ids) > held


def old_style(rope: dict) -> dict:
    """The same rope as config.json fields of transformers 4 (top-level theta, rope_scaling)."""
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {"rope_parameters": None, "rope_theta": rope["rope_theta"],
            "rope_scaling": None if scaling["rope_type"] == "default" else scaling}


@pytest.mark.parametrize("checkpoint", ["llama3-rope", "qwen2-qkv-bias"], indirect=True)
def test_a_wrong_rope_changes_the_tokens_and_the_old_field_style_does_not(checkpoint, tmp_path):
    rope = json.loads((checkpoint.path / "config.json").read_text())["rope_parameters"]
    expected = checkpoint.greedy(PROBE, NEW_TOKENS, stop_on_eos=False)
    readings = {"theta 10000": {"rope_parameters": {**rope, "rope_theta": 10000.0}},
                "no rope fields": {"rope_parameters": None},
                "old field style": {**old_style(rope), "dtype": None, "torch_dtype": "float32", "head_dim": None,
                                    "layer_types": None}}
    if rope["rope_type"] != "default":
        readings["scaling dropped"] = {"rope_parameters": {"rope_type": "default", "rope_theta": rope["rope_theta"]}}
    for reading, changes in readings.items():
        copy = tmp_path / reading.replace(" ", "-")
        shutil.copytree(checkpoint.path, copy)
        edit_config(copy, **changes)
        tokens = make_engine(copy, num_blocks=16).generate([PROBE], greedy(NEW_TOKENS, ignore_eos=True))[0].token_ids
        if reading == "old field style":
            assert tokens == expected
        else:
            assert tokens != expected, f"{reading}: same tokens, the test could not see a wrong rope"


def test_a_sliding_window_below_the_positions_clips_the_context_and_is_exact_within_it(hf_checkpoint, tmp_path):
    """Mistral attends within its window; the engine, attending over full context, stops there."""
    mistral = hf_checkpoint("mistral")
    copy = tmp_path / "window-48"
    shutil.copytree(mistral.path, copy)
    edit_config(copy, sliding_window=48)
    engine = make_engine(copy, num_blocks=16)
    assert engine.max_model_len == 48
    result = engine.generate([PROBE], greedy(36, ignore_eos=True))[0]  # 12 + 36: the whole window
    reference = HFCheckpoint(copy, mistral.eos_token_id)  # transformers applying its 48-token window
    assert result.token_ids == reference.greedy(PROBE, 36, stop_on_eos=False)
    assert result.finish_reason == FinishReason.LENGTH
    with pytest.raises(InvalidRequestError, match="max_model_len is 48"):
        engine.add_request(None, [0] * 49, greedy(1))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_logits_close_to_transformers(dtype, tiny_model_factory):
    import transformers
    model_dir = tiny_model_factory()
    ids = Tokenizer(model_dir).encode(PROMPTS[1])
    engine = make_engine(model_dir, dtype=dtype, num_blocks=NUM_BLOCKS)
    ours = engine.generate([ids], SamplingParams(max_tokens=1, temperature=0, logprobs=20))[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    top = ours.logprobs[0].top
    ids_ = [t for t, _ in top]
    assert torch.allclose(torch.tensor([v for _, v in top]), ref[ids_], atol=5e-2)
    assert ours.token_ids[0] == int(ref.argmax())
