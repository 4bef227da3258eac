"""The HTTP front end: a FastAPI app served by uvicorn as a task on the router's event loop.

FastAPI because it is already a dependency, its pydantic bodies give typed, validated
requests with field-level messages, and Starlette streams SSE and cancels the stream when
the client disconnects; uvicorn's `Server.serve` runs on an existing loop with our socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from router.config import RouterConfig
from router.gate import Gate
from router.generation import END_GRACE_S, GenerationService
from router.http_connections import DeadlineH11Protocol
from router.http_edge import EdgeMiddleware
from router.http_errors import install_error_handlers
from router.openai_routes import OpenAIRoutes, json_response
from router.openai_schema import VersionInfo
from router.prompts import PromptWork


def package_version() -> str:
    try:
        return importlib.metadata.version("tierserve")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


VERSION = package_version()


def build_app(service: GenerationService, gate: Gate, prep: PromptWork, model_name: str,
              max_body_bytes: int) -> FastAPI:
    """/v1/*, /tokenize and /detokenize behind the API keys and rate limits (router/http_edge.py);
    /health, /live, /version and /metrics open."""
    async def health() -> Response:
        """Readiness: 200 while every pool has a replica up (ready or degraded), else 503; per-pool detail."""
        state = service.backend.health()
        return JSONResponse(state.as_dict(), status_code=200 if state.serving else 503)

    async def live() -> Response:
        """Liveness: this process answers (whatever its pools' state: restarting it would not help them)."""
        return JSONResponse({"status": "live"})

    async def version() -> Response:
        return json_response(VersionInfo(version=VERSION))

    async def metrics() -> Response:
        body = await asyncio.to_thread(service.metrics.exposition)  # reads backend stats, may block
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes = OpenAIRoutes(service, prep, model_name)
    v1 = APIRouter(prefix="/v1")
    v1.add_api_route("/completions", routes.completions, methods=["POST"])
    v1.add_api_route("/chat/completions", routes.chat_completions, methods=["POST"])
    v1.add_api_route("/models", routes.list_models, methods=["GET"])
    v1.add_api_route("/models/{model:path}", routes.get_model, methods=["GET"])
    app = FastAPI(title="tierserve router", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(v1)
    app.add_api_route("/tokenize", routes.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", routes.detokenize, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/live", live, methods=["GET"])
    app.add_api_route("/version", version, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    install_error_handlers(app, service.metrics)
    app.add_middleware(EdgeMiddleware, gate=gate, metrics=service.metrics, max_body_bytes=max_body_bytes)
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the Router owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpFrontEnd:
    """A uvicorn server running as a task; `port` is the bound port."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task, port: int):
        self.server = server
        self.task = task
        self.port = port

    @classmethod
    async def start(cls, app: FastAPI, config: RouterConfig) -> HttpFrontEnd:
        """Bind ``config.http_port`` and serve ``app``: TLS when configured, idle and read deadlines."""
        host, port = config.host, config.http_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        server = _EmbeddedServer(uvicorn_config(app, config))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="router-http")
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            sock.close()
            task.result()  # re-raises a start-up failure
            raise RuntimeError(f"the HTTP server on {host}:{port} exited while starting")
        return cls(server, task, sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, let open responses finish within the grace period, then close."""
        self.server.should_exit = True
        await self.task


def uvicorn_config(app: FastAPI, c: RouterConfig) -> uvicorn.Config:
    tls = {}
    if c.tls:
        tls = {"ssl_certfile": c.tls_cert, "ssl_keyfile": c.tls_key}
    if c.tls_client_ca:
        tls.update(ssl_ca_certs=c.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                          timeout_graceful_shutdown=c.shutdown_grace_s + END_GRACE_S,
                          timeout_keep_alive=c.idle_timeout_s,
                          http=DeadlineH11Protocol.with_read_timeout(c.read_timeout_s), **tls)
