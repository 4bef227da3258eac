"""HTTP client disconnects, the router's request timeout and API keys: KV freed, service on.

Requests to be cancelled or timed out run on a held engine (``RunningRouter.engine_held``): they
stay running, however fast or slow the machine, until the test has done with them."""

from __future__ import annotations

import httpx
import openai
import pytest

LONG = {"max_tokens": 2000, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "Once upon a time"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Once upon a time"}]}),
])
def test_disconnect_mid_stream_aborts(router, path, body):
    aborted = router.aborted()
    payload = {"model": router.router.model_name, "stream": True, **LONG, **body}
    with router.engine_held():
        with httpx.Client(base_url=router.base_url, timeout=60) as http:
            with http.stream("POST", path, json=payload) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: {"))
        router.assert_aborted_and_freed(aborted)
    with httpx.Client(base_url=router.base_url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok", "components": {},
                                              "pools": {"engine": {"status": "ready", "replicas": {"engine": "ready"}}}}


def test_disconnect_while_waiting_for_whole_response_aborts(router):
    aborted = router.aborted()
    payload = {"model": router.router.model_name, "prompt": "Once upon a time", **LONG}
    with router.engine_held(), httpx.Client(base_url=router.base_url, timeout=httpx.Timeout(60, read=0.5)) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=payload)
        router.assert_aborted_and_freed(aborted)


def test_request_timeout_is_504_or_stream_error(timeout_router):
    model = timeout_router.router.model_name
    with openai.OpenAI(base_url=f"{timeout_router.base_url}/v1", api_key="unused", max_retries=0) as client, \
            timeout_router.engine_held():
        aborted = timeout_router.aborted()
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=model, prompt="Hello", max_tokens=2000, extra_body={"ignore_eos": True})
        assert info.value.status_code == 504 and "request timeout of 0.5 s" in info.value.body["message"]
        timeout_router.assert_aborted_and_freed(aborted)
        with pytest.raises(openai.APIError, match="request timeout of 0.5 s"):
            list(client.completions.create(model=model, prompt="Hello", max_tokens=2000, stream=True,
                                           extra_body={"ignore_eos": True}))
        timeout_router.assert_aborted_and_freed(aborted + 1)


def test_api_keys(strict_router):
    model = strict_router.router.model_name
    with openai.OpenAI(base_url=f"{strict_router.base_url}/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.completions.create(model=model, prompt="Hello", max_tokens=2)
        assert info.value.status_code == 401 and "API key" in info.value.body["message"]
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with openai.OpenAI(base_url=f"{strict_router.base_url}/v1", api_key="key-b", max_retries=0) as client:
        assert client.completions.create(model=model, prompt="Hello", max_tokens=2).choices
    with httpx.Client(base_url=strict_router.base_url, timeout=60) as http:
        missing = http.post("/v1/completions", json={"model": model, "prompt": "Hello"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthenticated"
        assert "missing API key" in missing.json()["error"]["message"]
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
