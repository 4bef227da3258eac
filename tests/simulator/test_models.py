"""Model shapes: presets, HF config.json, errors."""

from __future__ import annotations

import json

import pytest

from simulator.errors import SimInputError
from simulator.models import load_model


@pytest.mark.parametrize("name, billions", [("llama-3-8b", 8.03), ("llama-3-70b", 70.55), ("qwen2-7b", 7.62),
                                            ("mistral-7b", 7.24)])
def test_presets_have_the_published_parameter_counts(name: str, billions: float) -> None:
    assert load_model(name).num_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_kv_bytes_per_token_of_llama_3_8b() -> None:
    # the published figure: 128 KiB per token (32 layers x K and V x 8 kv heads x 128 dims x bf16)
    assert load_model("llama-3-8b").kv_bytes_per_token == 128 << 10
    assert load_model("llama-3-70b").kv_bytes_per_token == 320 << 10  # 80 layers, the same heads


def test_hf_config_json_and_checkpoint_dir(tmp_path) -> None:
    cfg = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
           "intermediate_size": 512, "vocab_size": 1000, "torch_dtype": "float32", "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load_model(str(tmp_path))
    assert (m.num_layers, m.head_dim, m.num_kv_heads, m.dtype_bytes) == (4, 32, 2, 4)
    assert m.hf_name == str(tmp_path)
    assert load_model(str(tmp_path / "config.json")) == m
    # transformers 5 writes the dtype as ``dtype``
    del cfg["torch_dtype"]
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    assert load_model(str(tmp_path)).dtype_bytes == 4


def test_bad_models_are_clear_errors(tmp_path) -> None:
    with pytest.raises(SimInputError, match="unknown model 'llama-9'"):
        load_model("llama-9")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(SimInputError, match="missing num_hidden_layers"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SimInputError, match="not valid JSON"):
        load_model(str(tmp_path))
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 6, "num_key_value_heads": 4,
           "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SimInputError, match="not a multiple of num_kv_heads"):
        load_model(str(tmp_path))
