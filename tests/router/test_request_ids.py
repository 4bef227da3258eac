"""Request ids: a client's id is bounded and only echoed; the backend sees router-made ids, so
reusing a running request's id never touches that request."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest

from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc

TOKENS = pb.SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def stub(router):
    with grpc.insecure_channel(router.grpc_target) as channel:
        yield pb_grpc.GenerationStub(channel)


def test_a_reused_running_id_runs_apart_from_the_first(stub, router):
    """Before: the second call aborted the first one's stream (in cluster mode, leaking a prefill KV block)."""
    with router.engine_held():  # the first is still running when the second arrives, on any machine
        first = stub.GenerateStream(pb.GenerateRequest(request_id="dup", text="Hello", sampling=TOKENS), timeout=60)
        assert len(next(first).token_ids) == 1
        second = stub.Generate.future(pb.GenerateRequest(request_id="dup", text="Hi", sampling=TOKENS), timeout=60)
        deadline = time.monotonic() + 30
        while len(running := router.backend.engine.call(lambda e: sorted(e.requests))) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(running) == 2 and all(rid.startswith("grpc-") for rid in running)  # never "dup"
    rest = list(first)
    assert sum(len(c.token_ids) for c in rest) == 19 and rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(c.request_id == "dup" for c in rest)
    reply = second.result()
    assert reply.request_id == "dup" and len(reply.token_ids) == 20
    assert ("x-request-id", "dup") in tuple(second.trailing_metadata())
    assert router.wait_until_idle().num_blocks_used == 0


def test_without_an_id_the_router_names_the_request(stub):
    call = stub.Generate.with_call(pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(max_tokens=1)), timeout=60)
    reply, info = call
    assert reply.request_id.startswith("grpc-")
    assert ("x-request-id", reply.request_id) in tuple(info.trailing_metadata())


@pytest.mark.parametrize("request_id", ["x" * 129, "tab\there", "new\nline", "with space", "caf\u00e9"])
def test_bad_grpc_request_ids_are_invalid_argument(stub, request_id):
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(request_id=request_id, text="Hi"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request_id must be 1-128 printable ASCII characters")
    trailing = dict(info.value.trailing_metadata())  # the id the router gave the call instead
    assert trailing["x-request-id"].startswith("grpc-") and info.value.details().endswith(
        f"(request id {trailing['x-request-id']})")


def test_http_request_ids(router):
    body = {"model": router.router.model_name, "prompt": "Hi", "max_tokens": 1}
    with httpx.Client(base_url=router.base_url, timeout=60) as http:
        own = http.post("/v1/completions", json=body)
        assert own.headers["x-request-id"] == own.json()["id"] and own.json()["id"].startswith("cmpl-")
        given = http.post("/v1/completions", json=body, headers={"x-request-id": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42" and given.json()["id"].startswith("cmpl-")
        refused = http.post("/v1/completions", json={**body, "max_tokens": 0}, headers={"x-request-id": "trace-43"})
        assert refused.status_code == 400 and refused.json()["error"]["request_id"] == "trace-43"
        bad = http.post("/v1/completions", json=body, headers={"x-request-id": "y" * 129})
        assert bad.status_code == 400 and "x-request-id must be 1-128" in bad.json()["error"]["message"]
        assert bad.headers["x-request-id"].startswith("req-")
        for response in (http.get("/health"), http.get("/nowhere"), http.get("/v1/models")):
            assert response.headers["x-request-id"]
