"""One request's trip through the backend, shared by the gRPC and HTTP front ends.

`GenerationService.stream` yields the backend's deltas while it records metrics, enforces
the router's request timeout and, whenever the caller stops early (cancelled task, closed
stream, timeout, error), aborts the request so its KV blocks are freed. When the router
stops, requests still running after the shutdown grace are cut off (``cut_off``): each ends
with ShuttingDownError, a terminal 503 / 'unavailable' event / UNAVAILABLE that the front
ends deliver within ``END_GRACE_S`` before they close their connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from engine.outputs import FinishReason, GenerationResult, RequestOutput
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.segments.spec import SegmentReuse
from router.backend import GenerationBackend
from router.errors import RequestTimeoutError, ServiceUnavailableError
from router.metrics import RouterMetrics

END_GRACE_S = 2.0  # after the shutdown grace: the front ends' time to deliver the cut-off requests' last event


class ShuttingDownError(ServiceUnavailableError):
    """The router is stopping and the request did not finish within the shutdown grace."""

    retry_after_s = 1

@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    cache_salt: str | None = None
    segments: SegmentReuse | None = None  # segment reuse (docs/segment_reuse.md)

class GenerationService:
    """Runs requests on a backend with metrics, a timeout and abort-on-exit."""

    def __init__(self, backend: GenerationBackend, metrics: RouterMetrics, timeout_s: float | None):
        self.backend = backend
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._waits: set[asyncio.Timeout] = set()  # each running request's wait for its next delta
        self._cut_off = False

    def cut_off(self) -> None:
        """End every running request now with ShuttingDownError (the router stops)."""
        self._cut_off = True
        now = asyncio.get_running_loop().time()
        for wait in list(self._waits):
            wait.reschedule(now)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yield the request's deltas; InvalidRequestError before the first if it is refused.

        Callers wrap it in ``contextlib.aclosing`` so that leaving early aborts at once.
        """
        tracker = self.metrics.track()
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        extra = {"segments": request.segments} if request.segments is not None else {}
        deltas = self.backend.generate(request.request_id, list(request.prompt_token_ids), request.params,
                                       request.cache_salt, **extra)
        started = finished = False
        try:
            while not finished:
                delta = await self._next(deltas, deadline)
                started, finished = True, delta.finished
                tracker.observe(delta)
                yield delta
        except InvalidRequestError:
            if not started:
                finished = True  # refused: nothing was queued, so nothing to abort
            raise
        finally:
            if not finished:  # counted before the backend frees its blocks, so /metrics never lags
                tracker.ended(FinishReason.ABORT)
            await deltas.aclose()
            if not finished:
                self.backend.abort(request.request_id)

    async def run(self, request: GenerationRequest) -> GenerationResult:
        """Run a request to completion and assemble its output."""
        result = GenerationResult(request.request_id, list(request.prompt_token_ids))
        async with aclosing(self.stream(request)) as deltas:
            async for delta in deltas:
                result.add(delta)
        return result

    async def _next(self, deltas: AsyncGenerator[RequestOutput, None], deadline: float | None) -> RequestOutput:
        try:
            async with asyncio.timeout_at(deadline) as wait:
                if self._cut_off:
                    wait.reschedule(asyncio.get_running_loop().time())
                self._waits.add(wait)
                try:
                    return await anext(deltas)
                finally:
                    self._waits.discard(wait)
        except TimeoutError:
            if self._cut_off:
                raise ShuttingDownError("the server is shutting down; the request did not finish within its "
                                        "shutdown grace") from None
            raise RequestTimeoutError(self.timeout_s or 0.0) from None
        except StopAsyncIteration:
            raise RuntimeError("the backend ended the stream before the request finished") from None
