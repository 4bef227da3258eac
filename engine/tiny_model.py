"""A small random checkpoint in Hugging Face format with a real byte-level BPE tokenizer.

It is the embedded default for demos and tests: every code path runs on it in seconds,
and `transformers` loads the same files, so our outputs can be compared with its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from engine.model.llama import LlamaForCausalLM
from engine.model.loader import init_random
from engine.model_config import ModelConfig

CORPUS = """\
A request enters the router, which tokenizes the prompt and looks for workers that already
hold the key-value cache of its prefix. The prefill pool computes the prompt on fast GPUs and
writes its cache into the store; the decode pool, on cheaper machines with more memory, picks
the cache up and streams tokens back one at a time. Shared system prompts, few-shot examples
and agent histories make most of real traffic, so the same prefix is computed once and reused.
The quick brown fox jumps over the lazy dog. Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000,
punctuation (commas, periods; colons: and dashes - too) and code such as def f(x): return x * 2
all appear in prompts. Hello, world! How are you today? I am fine, thank you, and you?
Once upon a time there was a small model that knew nothing, and yet it answered every question.
"""

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
ARCHITECTURES = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral"),
                 "qwen2": ("Qwen2ForCausalLM", "qwen2")}


@dataclass(frozen=True)
class TinyModelSpec:
    architecture: str = "llama"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    rope_scaling: dict | None = None
    attention_bias: bool = False
    dtype: str = "float32"
    num_shards: int = 1
    seed: int = 0
    weight_std: float = 0.08
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}")


def make_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write config.json, tokenizer files and safetensors weights for ``spec`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(out, spec.vocab_size, spec.max_position_embeddings)
    config = hf_config(spec, bos=cast(int, tokenizer.token_to_id(SPECIAL_TOKENS[0])),  # written just above
                       eos=cast(int, tokenizer.token_to_id(SPECIAL_TOKENS[1])))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_weights(out, ModelConfig.from_dict(config), spec)
    return out


def write_tokenizer(out: Path, vocab_size: int, model_max_length: int) -> Tokenizer:
    """tokenizer.json and tokenizer_config.json of a trained tokenizer, into ``out``."""
    tokenizer = train_tokenizer(vocab_size)
    save_tokenizer(out, tokenizer, model_max_length)
    return tokenizer


def save_tokenizer(out: Path, tokenizer: Tokenizer, model_max_length: int) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[2],
         "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length}, indent=2))


def train_tokenizer(vocab_size: int, texts: Iterable[str] | None = None) -> Tokenizer:
    """Byte-level BPE trained on ``texts`` (default: this module's small corpus); deterministic
    for the same texts in the same order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4 if texts is None else texts, trainer=trainer)
    bos = SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def hf_config(spec: TinyModelSpec, bos: int, eos: int) -> dict:
    arch, model_type = ARCHITECTURES[spec.architecture]
    config = {
        "architectures": [arch], "model_type": model_type, "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_word_embeddings, "bos_token_id": bos, "eos_token_id": eos,
        "torch_dtype": spec.dtype, "initializer_range": spec.weight_std,
    }
    if spec.rope_scaling:
        config["rope_scaling"] = dict(spec.rope_scaling)
    if spec.architecture == "llama":
        config["attention_bias"] = spec.attention_bias
    if spec.architecture == "mistral":
        config["sliding_window"] = None
    if spec.architecture == "qwen2":
        config["use_sliding_window"] = False
    config.update(spec.extra)
    return config


def write_weights(out: Path, cfg: ModelConfig, spec: TinyModelSpec) -> None:
    """Random weights under Hugging Face names (q/k/v and gate/up unfused), optionally sharded."""
    from engine.config import parse_dtype
    model = LlamaForCausalLM(cfg, dtype=torch.float32, device="cpu")
    init_random(model, spec.seed, spec.weight_std)
    tensors = {}
    for name, p in model.state_dict().items():
        tensors.update(_unfuse(name, p.to(parse_dtype(spec.dtype)), cfg))
    _save_sharded(out, tensors, spec.num_shards)


def _unfuse(name: str, t: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if ".qkv_proj." in name:
        q, k, v = t.split([cfg.q_size, cfg.kv_size, cfg.kv_size])
        return {name.replace("qkv_proj", p): x.contiguous() for p, x in (("q_proj", q), ("k_proj", k), ("v_proj", v))}
    if ".gate_up_proj." in name:
        g, u = t.chunk(2)
        return {name.replace("gate_up_proj", "gate_proj"): g.contiguous(),
                name.replace("gate_up_proj", "up_proj"): u.contiguous()}
    return {name: t.contiguous()}


def _save_sharded(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: tensors[n] for n in part}, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

