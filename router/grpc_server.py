"""The asyncio gRPC front end: tierserve.v1.Generation, grpc.health.v1 and reflection.

A call that is cancelled, or whose deadline passes, has its handler cancelled by grpc;
`GenerationService` then aborts the request in the backend, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router.auth import ApiKeyCheck
from router.backend import GenerationBackend
from router.errors import ErrorKind, classify
from router.generation import GenerationRequest, GenerationService
from router.grpc_convert import chunk_to_proto, request_from_proto, response_to_proto
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

STATUS_CODES = {ErrorKind.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
                ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
                ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
                ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
                ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
                ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL}
GENERATION_SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, service: GenerationService, auth: ApiKeyCheck):
        self.service = service
        self.auth = auth

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> pb.GenerateResponse:
        accepted = await self._accept(request, context)
        try:
            return response_to_proto(await self.service.run(accepted))
        except Exception as e:
            await self._fail(context, e)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[pb.GenerateChunk]:
        accepted = await self._accept(request, context)
        completion_tokens = 0
        try:
            async with aclosing(self.service.stream(accepted)) as deltas:
                async for delta in deltas:
                    completion_tokens += len(delta.new_token_ids)
                    yield chunk_to_proto(delta, completion_tokens)
        except Exception as e:
            await self._fail(context, e)

    async def _accept(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> GenerationRequest:
        try:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.auth.check(metadata.get("authorization"))
            tokenizer = self.service.backend.tokenizer
            return request_from_proto(request, tokenizer, f"grpc-{uuid.uuid4().hex}")
        except Exception as e:
            await self._fail(context, e)

    async def _fail(self, context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
        failure = classify(error)
        if failure.kind is ErrorKind.INTERNAL:
            log.error("gRPC request failed", exc_info=error)
        self.service.metrics.count_error(failure.kind)
        retry = (("retry-after", str(failure.retry_after_s or 1)),) if failure.kind is ErrorKind.UNAVAILABLE else ()
        await context.abort(STATUS_CODES[failure.kind], str(failure), trailing_metadata=retry)


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
    async def start(cls, host: str, port: int, service: GenerationService, auth: ApiKeyCheck,
                    grace_s: float) -> GrpcFrontEnd:
        server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(service, auth), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        serving = await _report_health(health_servicer, service.backend, None)
        reflection.enable_server_reflection((GENERATION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        await server.start()
        task = asyncio.create_task(_watch_health(health_servicer, service.backend, serving), name="grpc-health")
        return cls(server, health_servicer, bound, grace_s, task)

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
