"""config.json -> ModelConfig as transformers reads it: both field styles, its defaults, its rope
frequencies bit for bit; what we do not implement is a CheckpointError naming the field."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from engine.cache_sizing import resolve_max_model_len
from engine.config import ConfigError
from engine.model.rotary import inverse_frequencies
from engine.model_config import CheckpointError, ModelConfig
from engine.tiny_model import TinyModelSpec, hf_config
from tests.hf_checkpoints import CONFIG_CLASSES, LLAMA3_ROPE

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
ROPES = {
    "class default": None,
    "default theta 1e6": {"rope_type": "default", "rope_theta": 1e6},
    "linear": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
    "llama3": LLAMA3_ROPE,
    "llama3 without original_max_position_embeddings": {k: v for k, v in LLAMA3_ROPE.items()
                                                         if k != "original_max_position_embeddings"},
}


def written(arch: str, tmp_path, **fields) -> dict:
    """config.json as transformers' config class for ``arch`` writes it."""
    config = CONFIG_CLASSES[arch](**{**SHAPE, **fields})
    config.architectures = [ARCHITECTURES[arch]]
    config.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def transformers_inv_freq(config) -> torch.Tensor:
    """The inverse frequencies transformers' rotary embedding builds for ``config``."""
    rope = config.rope_parameters
    if rope["rope_type"] == "default":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    assert scale == 1.0
    return inv_freq


def to_old_style(cfg: dict) -> dict:
    """The same checkpoint as transformers 4 wrote it: top-level rope_theta, rope_scaling, torch_dtype."""
    old = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "dtype", "layer_types", "head_dim")}
    rope = dict(cfg["rope_parameters"])
    old["rope_theta"] = rope.pop("rope_theta")
    old["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    old["torch_dtype"] = cfg.get("dtype") or "float32"
    return old


@pytest.mark.parametrize("arch", sorted(CONFIG_CLASSES))
@pytest.mark.parametrize("rope", sorted(ROPES))
def test_rope_frequencies_are_transformers_own_in_both_field_styles(arch, rope, tmp_path):
    cfg = written(arch, tmp_path, rope_parameters=ROPES[rope], max_position_embeddings=4096)
    ours = ModelConfig.from_dict(cfg)
    theirs = CONFIG_CLASSES[arch].from_dict(cfg)
    assert torch.equal(inverse_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling),
                       transformers_inv_freq(theirs))
    old = to_old_style(cfg)
    assert ModelConfig.from_dict(old) == ours
    assert torch.equal(transformers_inv_freq(CONFIG_CLASSES[arch].from_dict(old)), transformers_inv_freq(theirs))


def test_llama3_pretraining_length_falls_back_as_transformers_does(tmp_path):
    rope = ROPES["llama3 without original_max_position_embeddings"]
    cfg = written("llama", tmp_path, rope_parameters=rope, max_position_embeddings=4096)
    assert ModelConfig.from_dict(cfg).rope_scaling.original_max_position_embeddings == 4096
    top_level = {**cfg, "original_max_position_embeddings": 1024}  # Phi-3 style: it wins
    assert ModelConfig.from_dict(top_level).rope_scaling.original_max_position_embeddings == 1024


@pytest.mark.parametrize("arch", sorted(CONFIG_CLASSES))
def test_defaults_for_absent_fields_are_transformers_own(arch):
    minimal = {"architectures": [ARCHITECTURES[arch]], "vocab_size": 512, "hidden_size": 256,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 32}
    ours, theirs = ModelConfig.from_dict(minimal), CONFIG_CLASSES[arch].from_dict(minimal)
    assert ours.num_kv_heads == theirs.num_key_value_heads
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"] and ours.rope_scaling is None
    assert ours.rms_norm_eps == theirs.rms_norm_eps
    assert ours.bos_token_id == theirs.bos_token_id
    assert ours.eos_token_ids == (() if theirs.eos_token_id is None else (theirs.eos_token_id,))
    assert ours.sliding_window == getattr(theirs, "sliding_window", None)
    assert ours.head_dim == 8 and ours.torch_dtype == "float32"


def test_tiny_model_old_style_config_still_reads():
    cfg = ModelConfig.from_dict(hf_config(TinyModelSpec(rope_scaling={"type": "linear", "factor": 2.0}), 0, 1))
    assert (cfg.rope_theta, cfg.rope_scaling.kind, cfg.rope_scaling.factor) == (10000.0, "linear", 2.0)
    assert cfg.eos_token_ids == (1,) and cfg.torch_dtype == "float32"


BASE = {"architectures": ["LlamaForCausalLM"], **SHAPE, "rope_parameters": dict(LLAMA3_ROPE)}


@pytest.mark.parametrize("changes, message", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}},
     "rope_parameters: rope_type 'yarn' is not implemented"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling: rope_type 'dynamic' is not implemented"),
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}, "'longrope'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "su", "short_factor": [1.0]}}, "'su'"),
    ({"rope_parameters": {**LLAMA3_ROPE, "partial_rotary_factor": 0.5}}, "partial_rotary_factor=0.5"),
    ({"partial_rotary_factor": 0.25}, "partial_rotary_factor=0.25"),
    ({"rope_parameters": {**LLAMA3_ROPE, "attention_factor": 2.0}}, "attention_factor=2.0"),
    ({"rope_parameters": {**LLAMA3_ROPE, "mscale": 1.0}}, "mscale=1.0 is not implemented"),
    ({"rope_parameters": {"rope_type": "default", "factor": 2.0}}, "factor=2.0 is not implemented"),
    ({"rope_parameters": {k: v for k, v in LLAMA3_ROPE.items() if k != "low_freq_factor"}},
     "rope_type 'llama3' needs low_freq_factor"),
    ({"rope_parameters": {**LLAMA3_ROPE, "high_freq_factor": 1.0}}, "high_freq_factor must exceed"),
    ({"rope_parameters": {"rope_type": "linear"}}, "rope_type 'linear' needs factor"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "per layer type"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling and rope_parameters.*differ"),
    ({"rope_parameters": None, "rope_theta": "1e6"}, "rope_theta must be a number"),
    ({"rope_parameters": None, "rope_theta": 0}, "rope_theta must be > 0"),
    ({"rope_parameters": "llama3"}, "rope_parameters must be an object"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"hidden_size": "64"}, "hidden_size must be a positive integer, got '64'"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive integer"),
    ({"rms_norm_eps": None}, "rms_norm_eps must be a number"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"eos_token_id": "2"}, "eos_token_id must be"),
])
def test_what_we_do_not_implement_is_refused_by_name(changes, message):
    with pytest.raises(CheckpointError, match=message):
        ModelConfig.from_dict({**BASE, **changes})


LLAMA3_SCALING = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}


@pytest.mark.parametrize("changes", [
    {"rope_parameters": {**LLAMA3_ROPE, "partial_rotary_factor": 1.0, "attention_factor": 1.0}},
    {"rope_parameters": None, "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **LLAMA3_SCALING}},
    {"rope_scaling": {"rope_type": "llama3", **LLAMA3_SCALING}, "rope_theta": 500000.0},
])
def test_neutral_options_old_names_and_agreeing_fields_read_the_same(changes):
    assert ModelConfig.from_dict({**BASE, **changes}) == ModelConfig.from_dict(BASE)


def qwen2(**fields) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], **SHAPE, **fields}


@pytest.mark.parametrize("raw, window", [
    (qwen2(), None),                                                            # use_sliding_window off
    (qwen2(use_sliding_window=True, sliding_window=64), None),                  # from layer 28 on: none of 2
    (qwen2(use_sliding_window=True, sliding_window=64, max_window_layers=1), 64),
    (qwen2(use_sliding_window=False, sliding_window=64, max_window_layers=0), None),
    (qwen2(use_sliding_window=True, sliding_window=64, layer_types=["sliding_attention", "full_attention"]), 64),
    ({"architectures": ["MistralForCausalLM"], **SHAPE}, 4096),                 # every layer, 4096 by default
    ({"architectures": ["MistralForCausalLM"], **SHAPE, "sliding_window": None}, None),
    ({"architectures": ["MistralForCausalLM"], **SHAPE, "use_sliding_window": False}, 4096),  # Mistral ignores it
    ({"architectures": ["LlamaForCausalLM"], **SHAPE, "sliding_window": 64, "use_sliding_window": True}, None),
])
def test_sliding_window_is_where_transformers_applies_one(raw, window):
    assert ModelConfig.from_dict(raw).sliding_window == window
    if raw["architectures"] == ["Qwen2ForCausalLM"]:  # its layers take config.sliding_window where layer_types say
        theirs = transformers.Qwen2Config.from_dict(raw)
        assert (theirs.sliding_window if "sliding_attention" in theirs.layer_types else None) == window
    if raw["architectures"] == ["MistralForCausalLM"]:  # every layer takes config.sliding_window
        assert transformers.MistralConfig.from_dict(raw).sliding_window == window


@pytest.mark.parametrize("raw, message", [
    (qwen2(layer_types=["full_attention"]), "layer_types must list 2"),
    (qwen2(layer_types=["full_attention", "chunked_attention"]), "layer_types must list 2"),
    ({"architectures": ["MistralForCausalLM"], **SHAPE, "sliding_window": 0}, "sliding_window must be a positive"),
])
def test_bad_sliding_window_fields_are_refused(raw, message):
    with pytest.raises(CheckpointError, match=message):
        ModelConfig.from_dict(raw)


def test_a_window_below_the_positions_clips_max_model_len_and_refuses_more(caplog):
    cfg = ModelConfig.from_dict({"architectures": ["MistralForCausalLM"], **SHAPE, "sliding_window": 1024,
                                 "max_position_embeddings": 8192})
    with caplog.at_level(logging.WARNING):
        assert resolve_max_model_len(cfg, None) == 1024
    assert "sliding_window=1024" in caplog.text
    assert resolve_max_model_len(cfg, 512) == 512
    with pytest.raises(ConfigError, match="limit of 1024 tokens, its sliding_window"):
        resolve_max_model_len(cfg, 2048)


def test_llama3_scaling_without_its_fields_is_a_checkpoint_error() -> None:
    """Built directly (not from config.json, whose parser fills them), a llama3 scaling missing its
    fields says which, instead of failing on a comparison with None."""
    from engine.checkpoint_error import CheckpointError
    from engine.rope_config import RopeScaling
    with pytest.raises(CheckpointError, match="llama3 needs low_freq_factor, high_freq_factor"):
        RopeScaling("llama3", 8.0)
