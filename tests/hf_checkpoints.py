"""Tiny checkpoints written by the installed transformers' own ``save_pretrained``, and its
greedy tokens on them: the reference every exactness test compares with.

The config is whatever the current release writes (transformers 5: ``dtype``, ``head_dim``,
``rope_parameters``, ``layer_types``). Weights are seeded and drawn wide, and the query and key
projections scaled up, so attention is sharp: positions decide the greedy tokens, and a wrong
rope theta or a dropped rope scaling changes them (tests/engine/test_transformers_parity.py
checks that it does). config.json's EOS is a token the model emits greedily a few steps into
``PROBE``, so requests can end naturally. The tokenizer is engine/tiny_model.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from engine.tiny_model import SPECIAL_TOKENS, write_tokenizer

CONFIG_CLASSES = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}
VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS = 512, 64, 128, 2, 4
WEIGHT_STD, QK_SCALE = 0.1, 3.0
TOKENIZER_EOS, PAD = SPECIAL_TOKENS.index("<|end_of_text|>"), SPECIAL_TOKENS.index("<|pad|>")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
# a prompt whose greedy continuation holds the checkpoint's EOS, EOS_STEP tokens in
PROBE = [0, 17, 233, 64, 301, 12, 99, 450, 7, 180, 66, 390]
EOS_STEP = 5
PROBE_TOKENS = 24
LONG_PROMPT = [0] + [(37 * i + 11) % 509 + 3 for i in range(1100)]  # over 1K tokens, within every variant


@dataclass(frozen=True)
class HFVariant:
    """``rope_parameters`` None: the config class's default (theta 10000, no scaling);
    ``extra``: more arguments to the config class."""

    architecture: str = "llama"
    num_kv_heads: int = 2
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    max_position_embeddings: int = 2048
    extra: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in CONFIG_CLASSES:
            raise ValueError(f"architecture must be one of {sorted(CONFIG_CLASSES)}, got {self.architecture!r}")


VARIANTS = {
    "llama-gqa": HFVariant(),
    "llama-mha-tied": HFVariant(num_kv_heads=4, tie_word_embeddings=True, seed=1),
    "llama3-rope": HFVariant(rope_parameters=LLAMA3_ROPE),
    "llama-linear-rope": HFVariant(rope_parameters={"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0}),
    "mistral": HFVariant(architecture="mistral", seed=3),
    "qwen2-qkv-bias": HFVariant(architecture="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
}


class HFCheckpoint:
    """A saved checkpoint and transformers' greedy generation on it (loaded back from disk,
    as a user would load it; results cached per request)."""

    def __init__(self, path: Path, eos_token_id: int):
        self.path, self.eos_token_id = path, eos_token_id
        self.eos_token_ids = tuple(sorted({eos_token_id, TOKENIZER_EOS}))  # the engine's: config + tokenizer
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self._cache: dict[tuple, list[int]] = {}

    def greedy(self, prompt: list[int], max_new_tokens: int, stop_on_eos: bool = True,
               min_new_tokens: int = 0) -> list[int]:
        """transformers' greedy tokens; with ``stop_on_eos`` the last is EOS when it stopped on one."""
        key = (tuple(prompt), max_new_tokens, stop_on_eos, min_new_tokens)
        if key not in self._cache:
            self._cache[key] = generate(self.model, prompt, max_new_tokens,
                                        self.eos_token_ids if stop_on_eos else None, min_new_tokens)
        return self._cache[key]

    def greedy_logprobs(self, prompt: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
        """Greedy tokens (EOS ignored) and each step's log-softmax over the vocabulary."""
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=None, pad_token_id=PAD, output_logits=True,
                                      return_dict_in_generate=True)
        return out.sequences[0, len(prompt):].tolist(), torch.log_softmax(torch.cat(out.logits).float(), dim=-1)

    @property
    def eos_first_prompt(self) -> list[int]:
        """A prompt whose first greedy token is EOS: PROBE and its continuation up to the EOS."""
        return PROBE + self.greedy(PROBE, PROBE_TOKENS)[:-1]


def generate(model, prompt: list[int], max_new_tokens: int, eos: tuple[int, ...] | None,
             min_new_tokens: int = 0) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, do_sample=False, eos_token_id=list(eos or []) or None,
                             pad_token_id=PAD)
    return out[0, len(prompt):].tolist()


def make_hf_checkpoint(out_dir: str | Path, variant: HFVariant = HFVariant()) -> HFCheckpoint:
    """Build ``variant`` with transformers (seeded), sharpen its attention, choose its EOS, and
    save it with ``save_pretrained`` beside a tokenizer."""
    out = Path(out_dir)
    config = CONFIG_CLASSES[variant.architecture](
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=variant.num_kv_heads,
        max_position_embeddings=variant.max_position_embeddings, tie_word_embeddings=variant.tie_word_embeddings,
        rope_parameters=variant.rope_parameters, initializer_range=WEIGHT_STD, bos_token_id=0, eos_token_id=None,
        **variant.extra)
    torch.manual_seed(variant.seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    sharpen(model)
    eos = choose_eos(model)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    model.save_pretrained(out)
    write_tokenizer(out, VOCAB, variant.max_position_embeddings)
    return HFCheckpoint(out, eos)


def sharpen(model) -> None:
    """Scale the query and key projections up (sharper attention); draw every bias (transformers
    starts them at zero, which would not tell a loaded bias from a dropped one)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(QK_SCALE)
            layer.self_attn.k_proj.weight.mul_(QK_SCALE)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, WEIGHT_STD)


def choose_eos(model) -> int:
    """The token PROBE's greedy continuation emits first at step EOS_STEP (one not seen before it)."""
    tokens = generate(model, PROBE, PROBE_TOKENS, eos=None)
    for step in range(EOS_STEP, len(tokens)):
        if tokens[step] not in tokens[:step] and tokens[step] >= len(SPECIAL_TOKENS):
            return tokens[step]
    raise AssertionError(f"no new token after step {EOS_STEP} in {tokens}: pick another seed")


def edit_config(path: Path, **changes) -> None:
    """Rewrite fields of a checkpoint's config.json (None deletes the field)."""
    file = path / "config.json"
    cfg = json.loads(file.read_text())
    cfg.update(changes)
    file.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=2))
