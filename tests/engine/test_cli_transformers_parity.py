"""`tierserve generate --json` gives transformers' greedy tokens on checkpoints it saved."""

from __future__ import annotations

import json

import pytest

from cluster.cli import build_parser
from tests.hf_checkpoints import LONG_PROMPT, PROBE


def tierserve_generate(capsys, model, prompt: list[int], *options: str) -> dict:
    """`tierserve generate` parsed and run in this process (a subprocess would re-import torch)."""
    args = build_parser().parse_args(["generate", "--model", str(model), "--prompt-ids", ",".join(map(str, prompt)),
                                      "--temperature", "0", "--json", *options])
    capsys.readouterr()
    assert args.func(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("variant", ["llama3-rope", "qwen2-qkv-bias"])
def test_generate_json_ends_on_eos_as_transformers_does(capsys, hf_checkpoint, variant):
    checkpoint = hf_checkpoint(variant)
    out = tierserve_generate(capsys, checkpoint.path, PROBE, "--max-tokens", "24")
    assert out["token_ids"] == checkpoint.greedy(PROBE, 24)
    assert out["token_ids"][-1] == checkpoint.eos_token_id and out["finish_reason"] == "stop"


def test_generate_json_long_prompt(capsys, hf_checkpoint):
    checkpoint = hf_checkpoint("llama-linear-rope")
    out = tierserve_generate(capsys, checkpoint.path, LONG_PROMPT, "--max-tokens", "6", "--ignore-eos")
    assert out["token_ids"] == checkpoint.greedy(LONG_PROMPT, 6, stop_on_eos=False)
    assert out["finish_reason"] == "length"
