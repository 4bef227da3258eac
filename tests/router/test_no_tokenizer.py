"""The single-process router over a checkpoint without tokenizer.json: token-id prompts give
the ids the checkpoint gives with its tokenizer; text, chat and stop strings are a clear 400
(gRPC INVALID_ARGUMENT), and the server keeps serving."""

from __future__ import annotations

import shutil

import grpc
import openai
import pytest

from engine.sampling_params import SamplingParams
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from tests.router.conftest import serve

PROMPT = [0, 42, 385, 81, 7]
PARAMS = SamplingParams(max_tokens=8, temperature=0, logprobs=1)
NO_TOKENIZER = "this model was loaded without a tokenizer: send the prompt as token ids"


@pytest.fixture(scope="module")
def bare_router(tiny_model, tmp_path_factory):
    bare = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    yield from serve(bare, request_timeout_s=None)


@pytest.fixture(scope="module")
def client(bare_router):
    with openai.OpenAI(base_url=f"{bare_router.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(bare_router):
    return bare_router.router.model_name


@pytest.fixture(scope="module")
def want(reference):
    """The checkpoint with its tokenizer, on the same token ids."""
    return reference([PROMPT], PARAMS)[0]


def test_completion_ids_come_back_as_logprob_tokens(client, model, want):
    got = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1)
    choice = got.choices[0]
    assert choice.text == "" and want.text
    assert choice.logprobs.tokens == [f"token_id:{t}" for t in want.token_ids]
    assert choice.logprobs.token_logprobs == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-5)
    assert choice.finish_reason == want.finish_reason.value
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(PROMPT), len(want.token_ids))


def test_streamed_completion_ids(client, model, want):
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1,
                                            stream=True))
    assert [t for c in chunks for t in c.choices[0].logprobs.tokens] == [f"token_id:{t}" for t in want.token_ids]
    assert "".join(c.choices[0].text for c in chunks) == ""


@pytest.mark.parametrize("call, message", [
    (lambda c, m: c.completions.create(model=m, prompt="Hello", max_tokens=4), NO_TOKENIZER),
    (lambda c, m: c.completions.create(model=m, prompt="Hello", max_tokens=4, stream=True), NO_TOKENIZER),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=4),
     "this model was loaded without a tokenizer: chat requests need one"),
    (lambda c, m: c.completions.create(model=m, prompt=PROMPT, max_tokens=4, stop=["fox"]),
     "this model was loaded without a tokenizer: stop strings cannot be matched"),
    (lambda c, m: c.completions.create(model=m, prompt=PROMPT, max_tokens=4, stop=["fox"], stream=True),
     "this model was loaded without a tokenizer: stop strings cannot be matched"),
])
def test_text_chat_and_stop_strings_are_400_then_the_next_request_works(client, model, want, call, message):
    with pytest.raises(openai.BadRequestError) as info:
        call(client, model)
    assert info.value.status_code == 400 and info.value.body["message"].startswith(message)
    got = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1)
    assert got.choices[0].logprobs.tokens == [f"token_id:{t}" for t in want.token_ids]


@pytest.fixture(scope="module")
def stub(bare_router):
    with grpc.insecure_channel(bare_router.grpc_target) as channel:
        yield pb_grpc.GenerationStub(channel)


def test_grpc_token_ids_unary_and_stream(stub, want):
    request = pb.GenerateRequest(request_id="ids-1", token_ids=pb.TokenIds(ids=PROMPT),
                                 sampling=pb.SamplingParams(max_tokens=8, temperature=0, logprobs=1))
    got = stub.Generate(request, timeout=60)
    assert list(got.token_ids) == want.token_ids and got.text == ""
    assert [lp.token_id for lp in got.logprobs] == want.token_ids
    chunks = list(stub.GenerateStream(request, timeout=60))
    assert [t for c in chunks for t in c.token_ids] == want.token_ids and all(c.text == "" for c in chunks)


@pytest.mark.parametrize("request_fields, message", [
    ({"text": "Hello"}, NO_TOKENIZER),
    ({"token_ids": pb.TokenIds(ids=PROMPT), "sampling": pb.SamplingParams(max_tokens=4, stop=["fox"])},
     "this model was loaded without a tokenizer: stop strings cannot be matched"),
])
def test_grpc_text_and_stop_strings_are_invalid_argument(stub, want, request_fields, message):
    for call in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as info:
            call(pb.GenerateRequest(request_id="refused", **request_fields), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(message)
    again = stub.Generate(pb.GenerateRequest(request_id="refused", token_ids=pb.TokenIds(ids=PROMPT),
                                             sampling=pb.SamplingParams(max_tokens=8, temperature=0)), timeout=60)
    assert list(again.token_ids) == want.token_ids
