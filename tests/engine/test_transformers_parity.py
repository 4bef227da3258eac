"""Greedy tokens identical to `transformers` generate, logits close, on every supported variant."""

from __future__ import annotations

import pytest
import torch

from engine.sampling_params import SamplingParams
from engine.tiny_model import TinyModelSpec
from engine.tokenizer import Tokenizer
from tests.engine.conftest import make_engine

transformers = pytest.importorskip("transformers")

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
VARIANTS = {
    "llama-gqa": TinyModelSpec(),
    "llama-mha": TinyModelSpec(num_kv_heads=4),
    "llama-mqa": TinyModelSpec(num_kv_heads=1),
    "llama-tied": TinyModelSpec(tie_word_embeddings=True),
    "llama3.1-rope-scaling": TinyModelSpec(rope_scaling=LLAMA3_ROPE),
    "llama-linear-rope": TinyModelSpec(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-attention-bias": TinyModelSpec(attention_bias=True),
    "llama-sharded": TinyModelSpec(num_shards=3),
    "llama-head-dim-32": TinyModelSpec(hidden_size=128, num_heads=4, num_kv_heads=2),
    "mistral": TinyModelSpec(architecture="mistral"),
    "qwen2-qkv-bias": TinyModelSpec(architecture="qwen2"),
    "qwen2-tied": TinyModelSpec(architecture="qwen2", tie_word_embeddings=True),
}
PROMPTS = ("Hello, world! How are you today?",
           "The prefill pool computes the prompt on fast GPUs and writes its cache into the store",
           "def f(x): return x * 2")
NEW_TOKENS = 24


def hf_greedy(model_dir, prompt_ids: list[int], dtype=torch.float32) -> tuple[list[int], torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=2, output_logits=True,
                         return_dict_in_generate=True)
    logprobs = torch.log_softmax(torch.cat(out.logits).float(), dim=-1)
    return out.sequences[0, len(prompt_ids):].tolist(), logprobs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_tokens_and_logits_match_transformers(variant, tiny_model_factory):
    model_dir = tiny_model_factory(VARIANTS[variant])
    tok = Tokenizer(model_dir)
    prompts = [tok.encode(p) for p in PROMPTS]
    engine = make_engine(model_dir)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=5)
    results = engine.generate(prompts, params)
    for ids, ours in zip(prompts, results):
        ref_tokens, ref_logprobs = hf_greedy(model_dir, ids)
        assert ours.token_ids == ref_tokens
        for step, lp in enumerate(ours.logprobs):
            top_ids = [t for t, _ in lp.top]
            top_vals = torch.tensor([v for _, v in lp.top])
            assert torch.allclose(top_vals, ref_logprobs[step, top_ids], atol=1e-4), f"step {step}"
            assert abs(lp.logprob - float(ref_logprobs[step, lp.token_id])) < 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_logits_close_to_transformers(dtype, tiny_model_factory):
    model_dir = tiny_model_factory()
    ids = Tokenizer(model_dir).encode(PROMPTS[1])
    engine = make_engine(model_dir, dtype=dtype)
    ours = engine.generate([ids], SamplingParams(max_tokens=1, temperature=0, logprobs=20))[0]
    _, ref = hf_greedy(model_dir, ids, dtype=getattr(torch, dtype))
    top = ours.logprobs[0].top
    ids_ = [t for t, _ in top]
    assert torch.allclose(torch.tensor([v for _, v in top]), ref[0, ids_], atol=5e-2)
    assert ours.token_ids[0] == int(ref[0].argmax())
