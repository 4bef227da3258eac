"""A checkpoint without tokenizer.json serves token ids: the same ids as with its tokenizer,
and a clear client error for text, chat and stop strings (vLLM's --skip-tokenizer-init)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest

from engine.async_engine import AsyncLLMEngine
from engine.eos_tokens import eos_token_ids
from engine.model_config import CheckpointError, ModelConfig
from engine.outputs import FinishReason
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.tokenizer import NoTokenizer, load_tokenizer
from tests.engine.conftest import make_engine

PROMPTS = [[0, 42, 385, 81], [5, 17, 300, 9, 77, 1]]
GREEDY = SamplingParams(max_tokens=10, temperature=0, logprobs=2)
NO_TOKENIZER = "this model was loaded without a tokenizer: send the prompt as token ids"


def copy_without_tokenizer(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer*"))
    return dst


@pytest.fixture(scope="module")
def bare_model(tiny_model, tmp_path_factory):
    return copy_without_tokenizer(tiny_model, tmp_path_factory.mktemp("bare") / "model")


@pytest.fixture(scope="module")
def bare(bare_model):
    return make_engine(bare_model)


@pytest.fixture(scope="module")
def full(tiny_model):
    return make_engine(tiny_model)


def test_token_ids_match_the_checkpoint_with_its_tokenizer(bare, full):
    assert isinstance(bare.tokenizer, NoTokenizer) and not isinstance(full.tokenizer, NoTokenizer)
    assert bare.eos_token_ids == full.eos_token_ids  # config.json names the tokenizer's EOS too
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_k=20, seed=7)
    for params in (GREEDY, seeded):
        want, got = full.generate(PROMPTS, params), bare.generate(PROMPTS, params)
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
        assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
        assert all(r.text == "" for r in got) and all(r.text for r in want)
    got, want = bare.generate(PROMPTS[:1], GREEDY)[0], full.generate(PROMPTS[:1], GREEDY)[0]
    assert [(lp.token_id, lp.top) for lp in got.logprobs] == [(lp.token_id, lp.top) for lp in want.logprobs]


@pytest.mark.parametrize("prompt, params, message", [
    ("Hello", SamplingParams(max_tokens=4), NO_TOKENIZER),
    (PROMPTS[0], SamplingParams(max_tokens=4, stop=("fox",)), "stop strings cannot be matched"),
])
def test_text_and_stop_strings_are_refused_then_the_next_request_works(bare, full, prompt, params, message):
    with pytest.raises(InvalidRequestError, match=message):
        bare.add_request("refused", prompt, params)
    assert "refused" not in bare.requests and not bare.has_unfinished()
    stop_at = full.generate(PROMPTS[:1], GREEDY)[0].token_ids[3]
    by_id = SamplingParams(max_tokens=10, temperature=0, stop_token_ids=(stop_at,))
    got, want = bare.generate(PROMPTS[:1], by_id)[0], full.generate(PROMPTS[:1], by_id)[0]
    assert got.token_ids == want.token_ids and got.token_ids[-1] == stop_at
    assert got.finish_reason is FinishReason.STOP


def test_async_engine_streams_token_ids_and_refuses_text(bare_model, full):
    engine = AsyncLLMEngine(make_engine(bare_model))

    async def collect(prompt):
        return [t async for d in engine.generate(None, prompt, GREEDY) for t in d.new_token_ids]

    async def main():
        with pytest.raises(InvalidRequestError, match=NO_TOKENIZER):
            await collect("Hello")
        return await collect(PROMPTS[1])
    try:
        assert asyncio.run(main()) == full.generate(PROMPTS[1:], GREEDY)[0].token_ids
    finally:
        engine.shutdown()


def test_only_a_missing_tokenizer_json_means_no_tokenizer(bare_model, tmp_path):
    assert isinstance(load_tokenizer(bare_model), NoTokenizer)
    corrupt = shutil.copytree(bare_model, tmp_path / "corrupt")
    (corrupt / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(CheckpointError, match="cannot load .*tokenizer.json"):
        load_tokenizer(corrupt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nothing-here")


def test_generation_config_eos_ends_a_tokenizerless_request(bare, bare_model, tmp_path):
    ids = bare.generate(PROMPTS[:1], SamplingParams(max_tokens=10, temperature=0))[0].token_ids
    eos = next(t for i, t in enumerate(ids) if i >= 2 and t not in ids[:i])
    other = next(t for t in range(5, 512) if t not in ids)
    model = shutil.copytree(bare_model, tmp_path / "model")
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, other]}))
    config = ModelConfig.from_dir(model)
    assert eos_token_ids(model, config, NoTokenizer()) == tuple(sorted({*config.eos_token_ids, eos, other}))
    got = make_engine(model).generate(PROMPTS[:1], SamplingParams(max_tokens=10, temperature=0))[0]
    assert got.token_ids == ids[:ids.index(eos) + 1] and got.finish_reason is FinishReason.STOP
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(CheckpointError, match="generation_config.json: eos_token_id"):
        make_engine(model)


def tierserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_prints_token_ids_and_refuses_text_in_one_line(bare_model, full):
    out = tierserve("generate", "--model", str(bare_model), "--prompt-ids", "0,42,385,81", "--max-tokens", "6")
    assert out.returncode == 0, out.stderr
    want = full.generate(PROMPTS[:1], SamplingParams(max_tokens=6, temperature=0))[0].token_ids
    assert out.stdout == ",".join(map(str, want)) + "\n"
    bad = tierserve("generate", "--model", str(bare_model), "--prompt", "Hello", "--max-tokens", "6")
    assert bad.returncode == 2 and bad.stderr == f"error: {NO_TOKENIZER}\n"
