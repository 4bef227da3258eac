"""Malformed HTTP bodies, unknown routes and a failed engine: OpenAI-shaped errors, server on."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from tests.router.conftest import serve


@pytest.fixture(scope="module")
def http(router):
    with httpx.Client(base_url=router.base_url, timeout=60) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (b'{"prompt": "hi"}', "model: Field required"),
    (b'{"model": "m"}', "prompt: Field required"),
    (b'{"model": "m", "prompt": "hi", "temperature": NaN}', "temperature"),
    (b'{"model": "m", "prompt": "hi", "seed": 18446744073709551616}', "seed"),
    (b'{"model": "m", "prompt": {"text": "hi"}}', "prompt"),
    (b'[1, 2]', "Input should be a valid dictionary"),
])
def test_malformed_bodies_are_400(http, router, content, message):
    content = content.replace(b'"m"', f'"{router.router.model_name}"'.encode())
    error = error_of(http.post("/v1/completions", content=content, headers={"content-type": "application/json"}),
                     400)
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert http.get("/health").status_code == 200


def test_unknown_route_and_wrong_method(http):
    assert error_of(http.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    assert "Method Not Allowed" in error_of(http.get("/v1/completions"), 405)["message"]


def test_unknown_model_in_chat_is_404(http):
    error = error_of(http.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}), 404)
    assert "'nope' does not exist" in error["message"] and error["code"] == "not_found"


@pytest.fixture(scope="module")
def stopped_engine_router(tiny_model):
    for running in serve(tiny_model):
        running.backend.shutdown()
        yield running


def test_failed_engine_gives_500_and_internal_without_killing_the_server(stopped_engine_router):
    r = stopped_engine_router
    with httpx.Client(base_url=r.base_url, timeout=60) as client:
        body = {"model": r.router.model_name, "prompt": "hi", "max_tokens": 2}
        error = error_of(client.post("/v1/completions", json=body), 500)
        assert error["message"] == f"internal error (request id {error['request_id']})"  # details in the log only
        assert error["type"] == "server_error"
        stream = client.post("/v1/completions", json={**body, "stream": True})
        assert error_of(stream, 500)["message"].startswith("internal error (request id cmpl-")
        health = client.get("/health")  # the server runs; its one pool does not
        assert health.status_code == 503 and health.json()["pools"]["engine"]["status"] == "down"
    with grpc.insecure_channel(r.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="hi"), timeout=60)
        deadline, health = time.monotonic() + 10, health_pb2_grpc.HealthStub(channel)
        while (status := health.Check(health_pb2.HealthCheckRequest(), timeout=10).status) \
                == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.1)  # the servicer follows the backend's health once a second
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details().startswith("internal error (request id grpc-")


def test_capacity_and_lost_replicas_are_503_and_unavailable():
    from cluster.dispatcher import NoCapacityError
    from cluster.output_channel import ReplicaFailed
    from router.errors import ErrorKind, classify
    from router.grpc_server import STATUS_CODES
    from router.http_errors import ERROR_TYPES, HTTP_STATUS
    for error in (NoCapacityError("no decode replica had room"), ReplicaFailed("replica decode-0 failed")):
        failure = classify(error, "req-1")
        assert failure.kind is ErrorKind.UNAVAILABLE and "retry later" in str(failure)
        assert HTTP_STATUS[failure.kind] == 503 and ERROR_TYPES[failure.kind] == "service_unavailable_error"
        assert STATUS_CODES[failure.kind] == grpc.StatusCode.UNAVAILABLE
        assert failure.retry_after_s == error.retry_after_s > 0
