"""Malformed HTTP bodies, unknown routes, a failed engine and dead cluster replicas: OpenAI-shaped
errors, server on."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.config import RouterConfig
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from router.server import Router
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


@pytest.fixture(scope="module")
def dead_cluster_router(tiny_model):
    """The cluster dispatcher behind the real router, over one prefill and one decode replica
    whose processes were killed (SIGKILL): real Ray actors, dead as a crashed replica is, that
    Ray does not restart (a replica's own restart is tests/faults' business)."""
    import ray

    from cluster.bringup.ray_connect import start_private_ray
    from cluster.cluster_view import ClusterView
    from cluster.dispatcher import Dispatcher
    from cluster.pool_handles import Pools, Replica
    from engine.model_config import ModelConfig
    from engine.tokenizer import load_tokenizer

    @ray.remote(num_cpus=0)
    class Process:
        """A replica's process, with the calls the dispatcher makes (none answered: it is killed)."""

        def pid(self) -> int:
            return os.getpid()

        def load(self): ...

        def prefill(self, request): ...

        def reserve(self, request): ...

        def abort(self, request_id): ...

        def release(self, request_id): ...

    start_private_ray(1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="router-loop", daemon=True)
    try:
        replicas = [Replica(w, w.partition("-")[0], Process.remote()) for w in ("prefill-0", "decode-0")]
        for replica in replicas:
            os.kill(ray.get(replica.actor.pid.remote(), timeout=120), signal.SIGKILL)
        model = ModelConfig.from_dir(tiny_model)
        dispatcher = Dispatcher(ClusterView(Pools(prefill=replicas[:1], decode=replicas[1:]), 16, None),
                                load_tokenizer(tiny_model), "tiny", model.max_position_embeddings,
                                model.vocab_size, model.eos_token_ids)
        thread.start()
        router = Router(dispatcher, RouterConfig(grpc_port=0, http_port=0))
        asyncio.run_coroutine_threadsafe(router.start(), loop).result(60)
        try:
            yield router
        finally:
            asyncio.run_coroutine_threadsafe(router.stop(), loop).result(60)
            dispatcher.close()  # its pings stop before Ray does
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        ray.shutdown()


@pytest.mark.ray
def test_dead_replicas_and_no_decode_capacity_are_503_with_retry_after_and_unavailable(dead_cluster_router, caplog):
    """A request whose prefill replica died is retried elsewhere, finds no prefill replica up and
    is a 503 (Retry-After 5); once the load pings found both replicas dead, the dispatcher's
    NoCapacityError (no decode replica up) is a 503 (Retry-After 1) over HTTP, streamed or not,
    and UNAVAILABLE with retry-after over gRPC: never a 500, nor Ray's text."""
    router = dead_cluster_router
    caplog.set_level(logging.WARNING, logger="router.errors")
    body = {"model": router.model_name, "prompt": "hi", "max_tokens": 2}
    with httpx.Client(base_url=f"http://127.0.0.1:{router.http_port}", timeout=60) as http:
        first = http.post("/v1/completions", json=body)  # the replicas look ready: the prefill call meets the dead one
        error = error_of(first, 503)
        assert (error["code"], error["type"], first.headers["retry-after"]) == \
            ("unavailable", "service_unavailable_error", "5")
        assert "no prefill replica is up (prefill-0: down)" in caplog.text
        deadline = time.monotonic() + 30  # until the load pings found the decode replica dead too (the
        # prefill one alone already makes the status down)
        while (health := http.get("/health").json())["pools"]["decode"]["replicas"] != {"decode-0": "down"} \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health["status"] == "down" and health["pools"]["decode"]["replicas"] == {"decode-0": "down"}, health
        caplog.clear()
        for stream in (False, True):
            response = http.post("/v1/completions", json={**body, "stream": stream})
            error = error_of(response, 503)
            assert (error["code"], response.headers["retry-after"]) == ("unavailable", "1")
            assert "Actor" not in error["message"] and "Traceback" not in error["message"]
        assert caplog.text.count("no decode replica is up: decode-0: down") == 2, caplog.text
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="hi"), timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "1") in tuple(info.value.trailing_metadata())
