"""Router lifecycle: free ports, one server off, a taken port, clean stop; the CLI under SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.async_engine import AsyncLLMEngine
from router.config import RouterConfig
from router.local_backend import LocalEngineBackend
from router.server import Router
from tests.engine.conftest import make_engine


@pytest.fixture(scope="module")
def backend(tiny_model):
    b = LocalEngineBackend(AsyncLLMEngine(make_engine(tiny_model, num_blocks=64)), model_name="tiny")
    yield b
    b.shutdown()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_start_reports_free_ports_and_stop_releases_them(backend):
    async def main() -> tuple[int, int, int]:
        router = Router(backend, RouterConfig(grpc_port=0, http_port=0, model_name="served-name"))
        await router.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}") as http:
            models = (await http.get("/v1/models")).json()
        grpc_port, http_port = router.grpc_port, router.http_port
        await router.stop()
        return grpc_port, http_port, models
    grpc_port, http_port, models = asyncio.run(main())
    assert grpc_port > 0 and http_port > 0 and grpc_port != http_port
    assert [m["id"] for m in models["data"]] == ["served-name"]
    assert port_is_free(grpc_port) and port_is_free(http_port)


def test_http_only_router(backend):
    async def main() -> int:
        router = Router(backend, RouterConfig(grpc_port=None, http_port=0))
        await router.start()
        with pytest.raises(RuntimeError, match="gRPC server is not running"):
            _ = router.grpc_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}") as http:
            status = (await http.get("/health")).status_code
        await router.stop()
        return status
    assert asyncio.run(main()) == 200


def test_taken_http_port_fails_start_and_stops_grpc(backend):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> Router:
            router = Router(backend, RouterConfig(grpc_port=0, http_port=port))
            with pytest.raises(OSError):
                await router.start()
            return router
        router = asyncio.run(main())
    with pytest.raises(RuntimeError):
        _ = router.grpc_port


def test_cli_serves_until_sigterm(tiny_model):
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--model", str(tiny_model), "--grpc-port", "0",
         "--http-port", "0", "--num-blocks", "64", "--served-model-name", "cli-model"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"grpc_port=(\d+) http_port=(\d+)", line)
        assert match, f"no ports announced: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        grpc_port, http_port = map(int, match.groups())
        reply = httpx.post(f"http://127.0.0.1:{http_port}/v1/completions", timeout=60,
                           json={"model": "cli-model", "prompt": "Hello", "max_tokens": 3})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
