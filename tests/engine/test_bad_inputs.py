"""Every bad input is a clear error naming what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.config import CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.model_config import CheckpointError
from engine.sampling_params import InvalidRequestError, SamplingParams
from tests.engine.conftest import make_engine


@pytest.fixture
def broken(tiny_model, tmp_path):
    """A fresh copy of the tiny checkpoint to break."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst)
    return dst


def edit_config(path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_directory():
    with pytest.raises(CheckpointError, match="does not exist"):
        LLMEngine(EngineConfig(model="/nonexistent/model"))


# no tokenizer.json is no refusal: the checkpoint serves token ids (tests/engine/test_no_tokenizer.py)
@pytest.mark.parametrize("name, message", [("config.json", "no config.json"),
                                           ("model.safetensors", "no \\*.safetensors")])
def test_missing_files(broken, name, message):
    (broken / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        LLMEngine(EngineConfig(model=str(broken)))


def test_unsupported_architecture(broken):
    edit_config(broken, architectures=["GPT2LMHeadModel"])
    with pytest.raises(CheckpointError, match="unsupported architecture.*GPT2LMHeadModel"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_config_missing_field(broken):
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["hidden_size"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hidden_size"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_shape_mismatch_names_the_tensor(broken):
    edit_config(broken, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight.*has shape"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_missing_layer_weights(broken):
    edit_config(broken, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="lacks weights for.*layers.2"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_corrupt_safetensors(broken):
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_bad_engine_config_values():
    with pytest.raises(ConfigError, match="block_size"):
        CacheConfig(block_size=12)
    with pytest.raises(ConfigError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ConfigError, match="dtype"):
        EngineConfig(model="x", dtype="int8")


def test_max_model_len_above_model_limit(tiny_model):
    with pytest.raises(ConfigError, match="exceeds the model's limit"):
        LLMEngine(EngineConfig(model=str(tiny_model), scheduler=SchedulerConfig(max_model_len=10**6)))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"max_tokens": -3}, "max_tokens must be a positive integer"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"logprobs": 50}, "logprobs must be between 0 and 20"),
    ({"stop": ("",)}, "stop strings must be non-empty"),
])
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return make_engine(tiny_model)


@pytest.mark.parametrize("prompt, message", [
    ("", "prompt is empty"),
    ([], "prompt is empty"),
    ([1, 2, 99999], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
    ([5] * 4000, "prompt has 4000 tokens; max_model_len is 2048"),
])
def test_bad_prompts(engine, prompt, message):
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request(None, prompt, SamplingParams())
    assert not engine.has_unfinished()


def test_duplicate_request_id(engine):
    engine.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=1))
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=1))
    engine.abort_request("dup")


def test_dummy_load_format_needs_only_config_and_tokenizer(broken):
    (broken / "model.safetensors").unlink()
    engine = LLMEngine(EngineConfig(model=str(broken), load_format="dummy"))
    assert len(engine.generate([[0, 5, 6]], SamplingParams(max_tokens=3))[0].token_ids) == 3
    with pytest.raises(ConfigError, match="load_format"):
        EngineConfig(model="x", load_format="pickle")
