"""The router: gRPC and HTTP front ends for one backend, on one asyncio event loop.

    router = Router(backend, RouterConfig(grpc_port=0, http_port=0))
    await router.start()          # router.grpc_port / router.http_port are the bound ports
    ...
    await router.stop()

or, blocking until SIGINT/SIGTERM: ``Router(backend, config).serve_forever()``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from router.auth import ApiKeyCheck
from router.backend import GenerationBackend
from router.config import RouterConfig
from router.gate import Gate
from router.generation import GenerationService
from router.grpc_server import GrpcFrontEnd
from router.http_server import HttpFrontEnd, build_app
from router.metrics import RouterMetrics
from router.prompts import PromptWork
from router.rate_limit import RateLimiter

log = logging.getLogger(__name__)


class Router:
    def __init__(self, backend: GenerationBackend, config: RouterConfig):
        self.backend = backend
        self.config = config
        self.model_name = config.model_name or backend.model_name
        self.metrics = RouterMetrics(backend, self.model_name)
        self.service = GenerationService(backend, self.metrics, config.request_timeout_s)
        secret = config.cache_salt_secret.encode() if config.cache_salt_secret else None
        self.gate = Gate(ApiKeyCheck(config.api_keys, secret), RateLimiter(config.rate_limit_rps, config.burst))
        self.prep = PromptWork(backend.tokenizer, backend.max_model_len)
        self._grpc: GrpcFrontEnd | None = None
        self._http: HttpFrontEnd | None = None

    @property
    def grpc_port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("the gRPC server is not running")
        return self._grpc.port

    @property
    def http_port(self) -> int:
        if self._http is None:
            raise RuntimeError("the HTTP server is not running")
        return self._http.port

    async def start(self) -> None:
        """Bind and start the configured servers; a failure stops whatever had started."""
        c = self.config
        try:
            if c.grpc_port is not None:
                self._grpc = await GrpcFrontEnd.start(c, self.service, self.gate, self.prep)
            if c.http_port is not None:
                app = build_app(self.service, self.gate, self.prep, self.model_name, c.max_request_bytes)
                self._http = await HttpFrontEnd.start(app, c)
        except BaseException:
            await self.stop()
            raise
        log.info("router serving %r: gRPC port %s, HTTP port %s", self.model_name,
                 self._grpc and self._grpc.port, self._http and self._http.port)

    async def stop(self) -> None:
        """Stop both servers; running requests get ``shutdown_grace_s`` to finish, then end with
        a terminal 'shutting down' error (503 / an error event / UNAVAILABLE), never a cut stream."""
        running = [s for s in (self._grpc, self._http) if s is not None]
        self._grpc = self._http = None
        stopping = asyncio.ensure_future(asyncio.gather(*(s.stop() for s in running)))
        done, _ = await asyncio.wait({stopping}, timeout=self.config.shutdown_grace_s)
        if not done:
            self.service.cut_off()  # the front ends wait END_GRACE_S more for these last events
        await stopping
        self.prep.close()

    async def serve(self, on_started: Callable[[Router], None] | None = None) -> None:
        """Start, call ``on_started`` (ports are bound then), serve until SIGINT or SIGTERM, stop."""
        loop, stopping = asyncio.get_running_loop(), asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await self.start()
            if on_started is not None:
                on_started(self)
            await stopping.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    def serve_forever(self, on_started: Callable[[Router], None] | None = None) -> None:
        """Blocking form of `serve` on a new event loop."""
        asyncio.run(self.serve(on_started))
