"""OpenAI-shaped HTTP errors: {"error": {"message", "type", "code", "param", "request_id"}}.

Every error names the request id (also in the ``x-request-id`` header of every response);
unexpected failures say only "internal error (request id X)", their details go to the log.
"""

from __future__ import annotations

import math

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.sampling_params import InvalidRequestError
from router.client_input import validation_message
from router.errors import ErrorKind, RequestError, classify
from router.metrics import RouterMetrics
from router.openai_schema import ErrorInfo, ErrorResponse
from router.sse import ClientDisconnected

HTTP_STATUS = {ErrorKind.INVALID_REQUEST: 400, ErrorKind.UNAUTHENTICATED: 401, ErrorKind.NOT_FOUND: 404,
               ErrorKind.TOO_LARGE: 413, ErrorKind.RATE_LIMITED: 429, ErrorKind.TIMEOUT: 504,
               ErrorKind.UNAVAILABLE: 503, ErrorKind.INTERNAL: 500}
ERROR_TYPES = {ErrorKind.INVALID_REQUEST: "invalid_request_error", ErrorKind.UNAUTHENTICATED: "authentication_error",
               ErrorKind.NOT_FOUND: "not_found_error", ErrorKind.TOO_LARGE: "invalid_request_error",
               ErrorKind.RATE_LIMITED: "rate_limit_error", ErrorKind.TIMEOUT: "timeout_error",
               ErrorKind.UNAVAILABLE: "service_unavailable_error", ErrorKind.INTERNAL: "server_error"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it


def error_body(error: Exception, metrics: RouterMetrics, request_id: str, backend_id: str | None = None
               ) -> tuple[ErrorResponse, RequestError]:
    """The body for ``error``, counted in the error metrics, and the client-facing error."""
    failure = classify(error, request_id, backend_id)
    metrics.count_error(failure.kind)
    body = ErrorResponse(error=ErrorInfo(message=str(failure), type=ERROR_TYPES[failure.kind],
                                         code=failure.kind.value, request_id=request_id))
    return body, failure


def error_response(error: Exception, metrics: RouterMetrics, scope: Scope, status: int | None = None) -> JSONResponse:
    """The response for ``error`` in a request whose ids the edge and the route put in its scope's
    state: ``request_id`` (the client's name for it), ``backend_id``."""
    state = scope.get("state", {})
    body, failure = error_body(error, metrics, state.get("request_id", "unknown"), state.get("backend_id"))
    headers = {}
    if failure.kind is ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(failure.retry_after_s)))
    return JSONResponse(body.model_dump(), status_code=status or HTTP_STATUS[failure.kind], headers=headers)


class InternalErrorMiddleware:
    """Answers an unexpected exception with an OpenAI-shaped 500.

    Starlette's own last-resort handler re-raises after responding, and uvicorn then drops
    the keep-alive connection under the client's next request.
    """

    def __init__(self, app: ASGIApp, metrics: RouterMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, receive, tracked_send)
        except Exception as e:
            if started or scope["type"] != "http":
                raise
            await error_response(e, self.metrics, scope)(scope, receive, send)


def install_error_handlers(app: FastAPI, metrics: RouterMetrics) -> None:
    async def on_request_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(error, metrics, request.scope)

    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequestError(validation_message(list(error.errors()))), metrics, request.scope)

    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = ErrorKind.NOT_FOUND if error.status_code == 404 else ErrorKind.INVALID_REQUEST
        return error_response(RequestError(kind, str(error.detail)), metrics, request.scope, status=error.status_code)

    async def on_disconnect(_: Request, __: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(InvalidRequestError, on_request_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_middleware(InternalErrorMiddleware, metrics=metrics)
