"""Checkpoint directories of well-known shapes with random weights, for benchmarks.

The directory holds config.json and a small tokenizer (benchmarks feed token ids); the
weights live only in memory, shared between our engine and `transformers` when compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.tiny_model import SPECIAL_TOKENS, train_tokenizer

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 0,
    "eos_token_id": 1, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}
TINY = {**LLAMA3_8B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "torch_dtype": "float32"}
# one narrow layer: steps cost almost nothing, so the serving stack's own overhead shows
MICRO = {**TINY, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1}
SHAPES = {"llama-3-8b": LLAMA3_8B, "tiny": TINY, "micro": MICRO}


def shape_dir(name: str, root: Path, max_positions: int | None = None) -> Path:
    """A config-only checkpoint directory (config.json, tokenizer) for shape ``name``;
    ``max_positions`` raises its context limit (Llama 3.1 is Llama 3's shape at 128K)."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    config = dict(SHAPES[name])
    if max_positions is not None:
        config["max_position_embeddings"] = max(config["max_position_embeddings"], max_positions)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    train_tokenizer(512).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1]}))
    return path
