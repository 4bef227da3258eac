"""/v1/completions and /v1/models through the official openai client, against a real engine."""

from __future__ import annotations

import math

import openai
import pytest

from engine.sampling_params import SamplingParams

GREEDY = {"max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}


def test_models_list_and_retrieve(client, model, router):
    models = client.models.list()
    assert [m.id for m in models.data] == [model]
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("prompt", ["Hello, world!", [0, 5, 17, 300], ["Hello, world!"]])
def test_completion_matches_engine(client, model, reference, prompt):
    single = prompt[0] if isinstance(prompt, list) and isinstance(prompt[0], str) else prompt
    want = reference([single])[0]
    got = client.completions.create(model=model, prompt=prompt, **GREEDY)
    choice = got.choices[0]
    assert choice.text == want.text and choice.finish_reason == "length"
    assert got.object == "text_completion" and got.model == model and got.id.startswith("cmpl-")
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(want.prompt_token_ids), 12)
    assert got.usage.total_tokens == len(want.prompt_token_ids) + 12


def test_streamed_completion_matches_engine(client, model, reference):
    want = reference(["The quick brown fox"])[0]
    chunks = list(client.completions.create(model=model, prompt="The quick brown fox", stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == want.text and len(texts) == 12
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons == [None] * 11 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completion_logprobs(client, model, reference):
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=2)
    want = reference(["Once upon a time"], params)[0]
    got = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0,
                                    logprobs=2, extra_body={"ignore_eos": True})
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs], abs=1e-5)
    assert len(lp.tokens) == 5 and all(1 <= len(top) <= 2 for top in lp.top_logprobs)  # 1: both decode alike
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):  # greedy: the top token
        assert top[token] == pytest.approx(logprob) and logprob == pytest.approx(max(top.values()))
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(v <= 0 and math.isfinite(v) for v in lp.token_logprobs)


def test_stop_string_is_cut(client, model, reference):
    want = reference(["Hello, world!"])[0].text
    stop = want[3:6]
    got = client.completions.create(model=model, prompt="Hello, world!", stop=[stop], **GREEDY)
    assert got.choices[0].text == want[:want.index(stop)] and got.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": [1] * 3000}, "max_model_len"),
    ({"prompt": "hi", "n": 2}, "n must be 1"),
    ({"prompt": "hi", "echo": True}, "echo is not supported"),
    ({"prompt": ["a", "b"]}, "batched prompts are not supported"),
    ({"prompt": "hi", "logprobs": 50}, "logprobs"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "stream": True, "max_tokens": 0}, "max_tokens"),
])
def test_bad_completions_are_400_with_message(client, model, kwargs, message):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, **kwargs)
    assert message in info.value.body["message"]
    assert info.value.body["type"] == "invalid_request_error"
    ok = client.completions.create(model=model, prompt="still serving", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-17", prompt="hi", max_tokens=2)
