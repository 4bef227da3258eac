"""Errors tell clients what they did wrong, or only that something failed and the request id:
no tracebacks, terminal codes, paths, PIDs or addresses. Client strings are checked at the
edge: a lone surrogate or an overlong field is a 400 naming the field, never a 500."""

from __future__ import annotations

import json
import logging

import grpc
import httpx
import pytest
from ray.exceptions import RayTaskError

from engine.outputs import RequestOutput
from engine.sampling_params import InvalidRequestError
from router.errors import ServiceUnavailableError
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc

LEAKS = ("Traceback", "\x1b[", "pid=", "10.1.2.3", "/home/ray", "actor_id", "cmpl-other")


def ray_error(cause: Exception) -> Exception:
    """What a Ray actor call raises for a remote ``cause``: passes its isinstance checks, str() is a traceback."""
    traceback = ('Traceback (most recent call last):\n  File "/home/ray/worker.py", line 7, in prefill\n'
                 f"    raise {type(cause).__name__}\n{type(cause).__name__}: {cause}")
    return RayTaskError("prefill", traceback, cause, proctitle="ray::PrefillWorker.prefill", pid=4242,
                        ip="10.1.2.3", actor_repr="PrefillWorker(prefill-0)", actor_id="ab" * 16).as_instanceof_cause()


@pytest.fixture
def failing(router, monkeypatch):
    """``failing(error, after=0)``: the backend raises ``error`` after ``after`` deltas."""
    def install(error: Exception, after: int = 0) -> None:
        async def generate(request_id, prompt_token_ids, params, cache_salt):
            for _ in range(after):
                yield RequestOutput(request_id, [5], "x", num_prompt_tokens=len(prompt_token_ids))
            raise error
        monkeypatch.setattr(router.backend, "generate", generate)
    return install


def post(router, **body) -> httpx.Response:
    return httpx.post(f"{router.base_url}/v1/completions", timeout=60,
                      json={"model": router.router.model_name, "prompt": "hi", "max_tokens": 2, **body})


def assert_clean(text: str) -> None:
    assert not [leak for leak in LEAKS if leak in text], text


def test_unexpected_errors_are_a_generic_500_with_the_details_only_in_the_log(router, failing, caplog):
    failing(ray_error(RuntimeError("cuda error on node 10.1.2.3 while serving cmpl-other")))
    with caplog.at_level(logging.ERROR, logger="router.errors"):
        reply = post(router)
    error = reply.json()["error"]
    assert reply.status_code == 500 and error["message"] == f"internal error (request id {error['request_id']})"
    assert reply.headers["x-request-id"] == error["request_id"]
    assert_clean(reply.text)
    assert error["request_id"] in caplog.text and "10.1.2.3" in caplog.text  # the operator gets the details


def test_a_remote_invalid_request_is_a_plain_400(router, failing):
    failing(ray_error(InvalidRequestError("prompt token id 999 is outside the vocabulary [0, 512)")))
    reply = post(router)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "prompt token id 999 is outside the vocabulary [0, 512)"


def test_unavailable_is_a_plain_503(router, failing):
    failing(ServiceUnavailableError("replica decode-0 (actor ab12, pid=4242, 10.1.2.3) failed", retry_after_s=3))
    reply = post(router)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "3"
    assert reply.json()["error"]["message"].startswith("service unavailable, retry later (request id cmpl-")
    assert_clean(reply.text)


def test_an_error_mid_stream_is_a_clean_event(router, failing):
    failing(ray_error(RuntimeError("worker 10.1.2.3 died")), after=1)
    reply = post(router, stream=True)
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[-2])["error"]
    assert reply.status_code == 200 and events[-1] == "[DONE]"
    assert error["message"] == f"internal error (request id {reply.headers['x-request-id']})"
    assert_clean(reply.text)


def test_grpc_errors_carry_the_request_id_and_no_details(router, failing):
    failing(ray_error(RuntimeError("cuda error on node 10.1.2.3")))
    with grpc.insecure_channel(router.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(request_id="mine-1", text="hi"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id mine-1)"
    assert ("x-request-id", "mine-1") in tuple(info.value.trailing_metadata())


SURROGATE = "bad \ud800 text"


@pytest.mark.parametrize("path, fields, where", [
    ("/v1/completions", {"prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {"prompt": [SURROGATE]}, "prompt[0]"),
    ("/v1/completions", {"stop": ["ok", SURROGATE]}, "stop[1]"),
    ("/v1/completions", {"stop": SURROGATE}, "stop"),
    ("/v1/completions", {"user": SURROGATE}, "user"),
    ("/v1/completions", {"cache_salt": SURROGATE}, "cache_salt"),
    ("/v1/completions", {"model": SURROGATE}, "model"),
    ("/v1/completions", {SURROGATE: 1}, "body: a key"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": SURROGATE}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": SURROGATE, "content": "hi"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]},
     "messages[0].content[0].text"),
])
def test_lone_surrogates_are_400_naming_the_field(router, path, fields, where):
    body = {"model": router.router.model_name, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2, **fields}
    reply = httpx.post(f"{router.base_url}{path}", content=json.dumps(body).encode(), timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"] == f"{where}: contains a lone surrogate; strings must be valid Unicode text"


def test_a_body_that_is_not_utf8_is_400(router):
    body = b'{"model": "m", "prompt": "\xed\xa0\x80"}'  # a surrogate, UTF-8 encoded (which UTF-8 forbids)
    reply = httpx.post(f"{router.base_url}/v1/completions", content=body, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["message"].startswith("request body is not valid UTF-8")


@pytest.mark.parametrize("fields, where", [
    ({"model": "m" * 257}, "model"), ({"user": "u" * 257}, "user"), ({"cache_salt": "s" * 257}, "cache_salt"),
    ({"stop": ["s"] * 17}, "stop"), ({"stop": "s" * 257}, "stop"), ({"stop_token_ids": [1] * 257}, "stop_token_ids"),
])
def test_overlong_fields_are_400_naming_them(router, fields, where):
    reply = post(router, **fields)
    assert reply.status_code == 400 and reply.json()["error"]["message"].startswith(f"{where}")


def test_overlong_chat_role_is_400(router):
    reply = httpx.post(f"{router.base_url}/v1/chat/completions", timeout=60, json={
        "model": router.router.model_name, "messages": [{"role": "r" * 65, "content": "hi"}]})
    assert reply.status_code == 400 and reply.json()["error"]["message"].startswith("messages.0.role")


def test_grpc_strings_are_checked(router):
    with grpc.insecure_channel(router.grpc_target) as channel:
        raw = channel.unary_unary("/tierserve.v1.Generation/Generate")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x12\x03\xed\xa0\x80", timeout=60)  # text = a UTF-8 encoded surrogate
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid tierserve.v1.GenerateRequest" in info.value.details()
        stub = pb_grpc.GenerationStub(channel)
        for request, where in [(pb.GenerateRequest(text="hi", cache_salt="s" * 257), "cache_salt"),
                               (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(stop=["s"] * 17)),
                                "sampling.stop"),
                               (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(stop=["s" * 257])),
                                "sampling.stop[0]")]:
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith(where)
