"""Health over HTTP, gRPC and /metrics, and the retry hint of a 503, on a backend whose replica
states the test sets (no engine, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.tokenizer import Tokenizer
from router.backend import BackendHealth, BackendStats, HealthState
from router.config import RouterConfig
from router.errors import ServiceUnavailableError
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from router.server import Router

READY, DEGRADED, DOWN = HealthState.READY, HealthState.DEGRADED, HealthState.DOWN


class StatesBackend:
    """Every request fails as unavailable; ``states`` is what health() reports."""

    def __init__(self, tokenizer: Tokenizer):
        self.model_name, self.tokenizer, self.max_model_len = "m", tokenizer, 128
        self.states = {"prefill": {"prefill-0": READY}, "decode": {"decode-0": READY, "decode-1": READY}}
        self.redis = READY

    async def generate(self, request_id, prompt_token_ids, params, cache_salt):
        raise ServiceUnavailableError("replica decode-0 failed", retry_after_s=5)
        yield  # an async generator, as the protocol says

    def abort(self, request_id: str) -> None:
        pass

    def stats(self) -> BackendStats:
        return BackendStats()

    def health(self) -> BackendHealth:
        return BackendHealth(self.states, {"redis": self.redis})


@pytest.fixture(scope="module")
def served(tiny_model):
    backend = StatesBackend(Tokenizer(tiny_model))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    router = Router(backend, RouterConfig(grpc_port=0, http_port=0))
    asyncio.run_coroutine_threadsafe(router.start(), loop).result(60)
    yield backend, router
    asyncio.run_coroutine_threadsafe(router.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def grpc_status(router: Router, wanted: int, timeout_s: float = 10.0) -> int:
    """The overall gRPC health status, once it is ``wanted`` (the servicer follows once a second)."""
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + timeout_s
        while (status := stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status) != wanted \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    return status


def state_sample(router: Router, pool: str, replica: str, state: HealthState) -> float | None:
    return router.metrics.registry.get_sample_value("tierserve_replica_state",
                                                    {"pool": pool, "replica": replica, "state": state.value})


def test_health_follows_the_replica_states(served):
    backend, router = served
    with httpx.Client(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30) as http:
        body = http.get("/health").json()
        assert body == {"status": "ok", "components": {"redis": "ready"},
                        "pools": {"prefill": {"status": "ready", "replicas": {"prefill-0": "ready"}},
                                  "decode": {"status": "ready",
                                             "replicas": {"decode-0": "ready", "decode-1": "ready"}}}}
        assert grpc_status(router, health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING

        backend.states["decode"]["decode-0"], backend.redis = DOWN, DOWN  # a pool still has a replica up
        response = http.get("/health")
        assert response.status_code == 200 and response.json()["status"] == "degraded"
        assert response.json()["pools"]["decode"] == {"status": "ready",
                                                      "replicas": {"decode-0": "down", "decode-1": "ready"}}
        assert (state_sample(router, "decode", "decode-0", DOWN), state_sample(router, "decode", "decode-0", READY)) \
            == (1.0, 0.0)
        assert router.metrics.registry.get_sample_value("tierserve_component_state",
                                                        {"component": "redis", "state": "down"}) == 1.0

        backend.states["prefill"]["prefill-0"] = DOWN  # a pool with no replica up: not serving
        response = http.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "down"
        assert response.json()["pools"]["prefill"]["status"] == "down"
        assert grpc_status(router, health_pb2.HealthCheckResponse.NOT_SERVING) \
            == health_pb2.HealthCheckResponse.NOT_SERVING

        backend.states["prefill"]["prefill-0"] = DEGRADED  # slow to answer, but still used
        assert http.get("/health").status_code == 200
        assert grpc_status(router, health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
        backend.states["prefill"]["prefill-0"] = backend.states["decode"]["decode-0"] = backend.redis = READY
        assert http.get("/health").json()["status"] == "ok"


def test_unavailable_carries_a_retry_hint(served):
    _, router = served
    body = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 4}
    with httpx.Client(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30) as http:
        for stream in (False, True):
            response = http.post("/v1/completions", json={**body, "stream": stream})
            assert response.status_code == 503 and response.headers["retry-after"] == "5"
            error = response.json()["error"]
            assert error["code"] == "unavailable" and "Traceback" not in error["message"]
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), sampling=pb.SamplingParams(max_tokens=4))
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "5") in tuple(info.value.trailing_metadata())
