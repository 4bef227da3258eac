"""The asyncio gRPC front end: tierserve.v1.Generation, grpc.health.v1 and reflection.

A call that is cancelled, or whose deadline passes, has its handler cancelled by grpc;
`GenerationService` then aborts the request in the backend, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router.backend import GenerationBackend
from router.config import RouterConfig
from router.gate import Gate
from router.generation import END_GRACE_S, GenerationService
from router.grpc_generation import STATUS_CODES, GenerationServicer  # noqa: F401  (STATUS_CODES re-exported)
from router.prompts import PromptWork
from router.proto import tierserve_pb2 as pb

log = logging.getLogger(__name__)

GENERATION_SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcFrontEnd:
    """A started grpc.aio server; `port` is the bound port."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, port: int,
                 grace_s: float, health_task: asyncio.Task | None = None):
        self.server = server
        self.health = health_servicer
        self.port = port
        self.grace_s = grace_s
        self.health_task = health_task

    @classmethod
    async def start(cls, config: RouterConfig, service: GenerationService, gate: Gate, prep: PromptWork
                    ) -> GrpcFrontEnd:
        """Bind ``config.grpc_port`` (TLS when configured) and serve Generation, health and reflection."""
        server = grpc.aio.server(options=server_options(config))
        generation = GenerationServicer(service, gate, prep)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GENERATION_SERVICE,
                                                                              generation.handlers()),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        serving = await _report_health(health_servicer, service.backend, None)
        reflection.enable_server_reflection((GENERATION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        host, port = config.host, config.grpc_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if config.tls:
            bound = server.add_secure_port(address, credentials(config))
        else:
            bound = server.add_insecure_port(address)
        await server.start()
        task = asyncio.create_task(_watch_health(health_servicer, service.backend, serving), name="grpc-health")
        return cls(server, health_servicer, bound, config.shutdown_grace_s + END_GRACE_S, task)

    async def stop(self) -> None:
        """Report NOT_SERVING, then let running calls finish within the grace period."""
        if self.health_task is not None:
            self.health_task.cancel()
            await asyncio.gather(self.health_task, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_s)


async def _report_health(servicer: health.aio.HealthServicer, backend: GenerationBackend,
                         serving: bool | None) -> bool:
    """Set SERVING / NOT_SERVING (overall and for the Generation service) from the backend's
    health when it changed from ``serving``; returns the new value."""
    now = backend.health().serving
    if now != serving:
        status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", GENERATION_SERVICE):
            await servicer.set(name, status)
    return now


async def _watch_health(servicer: health.aio.HealthServicer, backend: GenerationBackend, serving: bool,
                        interval_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            serving = await _report_health(servicer, backend, serving)
        except Exception:  # noqa: BLE001 — keep watching; the last status stands meanwhile
            log.exception("reading the backend's health failed")


def server_options(c: RouterConfig) -> list[tuple[str, int]]:
    """Message size, idle connections and handshakes bounded like the HTTP server's."""
    return [("grpc.max_receive_message_length", c.max_request_bytes),
            ("grpc.max_connection_idle_ms", int(c.idle_timeout_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(c.read_timeout_s * 1000)),
            ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]


def credentials(c: RouterConfig) -> grpc.ServerCredentials:
    """TLS from the configured PEM files; with ``tls_client_ca``, clients must present a certificate."""
    ca = Path(c.tls_client_ca).read_bytes() if c.tls_client_ca else None
    key, cert = cast(str, c.tls_key), cast(str, c.tls_cert)  # both set: called only where config.tls
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)
