"""The single-process server over real HTTP gives transformers' greedy tokens on checkpoints it
saved: EOS endings, min_tokens and a long prompt, streamed or not.

A completion names its tokens in its logprobs (each token's own string), so those and the
usage count stand for the token ids.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from engine.tokenizer import Tokenizer
from router.config import RouterConfig
from tests.hf_checkpoints import EOS_STEP, LONG_PROMPT, PROBE, HFCheckpoint
from tests.router.conftest import RunningRouter


class Served:
    def __init__(self, checkpoint: HFCheckpoint, client: openai.OpenAI, model: str):
        self.checkpoint, self.client, self.model = checkpoint, client, model
        self.tokenizer = Tokenizer(checkpoint.path)

    def complete(self, prompt: list[int], max_tokens: int, **extra):
        return self.client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens,
                                              temperature=0, logprobs=1, extra_body=extra)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.token_string(t) for t in token_ids]


@pytest.fixture(scope="module", params=["llama3-rope", "qwen2-qkv-bias"])
def served(request, hf_checkpoint) -> Iterator[Served]:
    checkpoint = hf_checkpoint(request.param)
    running = RunningRouter(checkpoint.path, RouterConfig(grpc_port=0, http_port=0, request_timeout_s=None))
    try:
        with openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            yield Served(checkpoint, c, running.router.model_name)
        stats = running.wait_until_idle()
        assert (stats.num_blocks_used, stats.num_running, stats.num_waiting) == (0, 0, 0)
    finally:
        running.close()


def test_completion_ends_on_eos_as_transformers_does(served):
    expected = served.checkpoint.greedy(PROBE, 24)
    assert len(expected) == EOS_STEP + 1 and expected[-1] == served.checkpoint.eos_token_id
    got = served.complete(PROBE, 24)
    choice = got.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.logprobs.tokens == served.token_strings(expected)
    assert got.usage.completion_tokens == len(expected)
    stream = served.client.completions.create(model=served.model, prompt=PROBE, max_tokens=24, temperature=0,
                                              stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == choice.text and chunks[-1].finish_reason == "stop"


def test_min_tokens_and_long_prompt_match_transformers(served):
    held = EOS_STEP + 4
    expected = served.checkpoint.greedy(PROBE, 24, min_new_tokens=held)
    got = served.complete(PROBE, 24, min_tokens=held).choices[0]
    assert got.logprobs.tokens == served.token_strings(expected) and len(expected) > held
    expected = served.checkpoint.greedy(LONG_PROMPT, 6, stop_on_eos=False)
    got = served.complete(LONG_PROMPT, 6, ignore_eos=True)
    assert got.choices[0].logprobs.tokens == served.token_strings(expected)
    assert (got.usage.prompt_tokens, got.choices[0].finish_reason) == (len(LONG_PROMPT), "length")
