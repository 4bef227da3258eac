"""/v1/chat/completions through the openai client: the chat template, streaming, logprobs, errors."""

from __future__ import annotations

import openai
import pytest

from engine.sampling_params import SamplingParams

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
GREEDY = {"max_tokens": 10, "temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def chat_prompt(router) -> str:
    return router.backend.tokenizer.apply_chat_template(MESSAGES)


def test_chat_matches_engine_on_templated_prompt(client, model, reference, chat_prompt):
    want = reference([chat_prompt], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    got = client.chat.completions.create(model=model, messages=MESSAGES, **GREEDY)
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == "length" and got.object == "chat.completion"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(want.prompt_token_ids), 10)


def test_chat_stream(client, model, reference, chat_prompt):
    want = reference([chat_prompt], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_text_parts_and_logprobs(client, model):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    got = client.chat.completions.create(model=model, messages=parts, logprobs=True, top_logprobs=3, **GREEDY)
    content = got.choices[0].logprobs.content
    assert len(content) == 10 and all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)
    assert content[0].bytes is not None
    for c in content:  # greedy: each token is its step's most likely one, with that logprob
        assert c.top_logprobs[0].token == c.token and c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= c.top_logprobs[2].logprob


def test_chat_without_max_tokens_runs_to_the_context_end_or_eos(client, model, router, reference, chat_prompt):
    got = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    budget = router.backend.max_model_len - got.usage.prompt_tokens
    want = reference([chat_prompt], SamplingParams(max_tokens=budget, temperature=0))[0]  # the rest of the context
    assert got.usage.completion_tokens == len(want.token_ids) and got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason.value  # "stop" at EOS, else "length" at the end


@pytest.mark.parametrize("kwargs, message", [
    ({"messages": []}, "at least one message"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "top_p": 1.5}, "top_p"),
    ({"messages": MESSAGES, "n": 3}, "n must be 1"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "requires logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "only text content"),
    ({"messages": [{"content": "no role"}]}, "role"),
    ({"messages": MESSAGES, "stream": True, "temperature": -2}, "temperature"),
])
def test_bad_chat_requests_are_400(client, model, kwargs, message):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, **kwargs)
    assert message in info.value.body["message"]
    assert client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2).choices
