"""OpenAI-shaped HTTP errors: {"error": {"message", "type", "code", "param"}} with a fitting status."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.sampling_params import InvalidRequestError
from router.errors import ErrorKind, RequestError, classify
from router.metrics import RouterMetrics
from router.openai_schema import ErrorInfo, ErrorResponse
from router.sse import ClientDisconnected

log = logging.getLogger(__name__)

HTTP_STATUS = {ErrorKind.INVALID_REQUEST: 400, ErrorKind.UNAUTHENTICATED: 401, ErrorKind.NOT_FOUND: 404,
               ErrorKind.TIMEOUT: 504, ErrorKind.UNAVAILABLE: 503, ErrorKind.INTERNAL: 500}
ERROR_TYPES = {ErrorKind.INVALID_REQUEST: "invalid_request_error", ErrorKind.UNAUTHENTICATED: "authentication_error",
               ErrorKind.NOT_FOUND: "not_found_error", ErrorKind.TIMEOUT: "timeout_error",
               ErrorKind.UNAVAILABLE: "service_unavailable_error",
               ErrorKind.INTERNAL: "server_error"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it


def error_body(error: Exception, metrics: RouterMetrics) -> ErrorResponse:
    """The body for ``error``, counted in the error metrics."""
    failure = classify(error)
    if failure.kind is ErrorKind.INTERNAL:
        log.error("HTTP request failed", exc_info=error)
    metrics.count_error(failure.kind)
    return ErrorResponse(error=ErrorInfo(message=str(failure), type=ERROR_TYPES[failure.kind],
                                         code=failure.kind.value))


def validation_message(error: RequestValidationError) -> str:
    """'field: problem' for the first few problems pydantic found in the body."""
    parts = []
    for problem in error.errors()[:3]:
        if problem.get("type") == "json_invalid":
            return f"request body is not valid JSON: {problem.get('ctx', {}).get('error', problem['msg'])}"
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts) or "invalid request body"


def error_response(error: Exception, metrics: RouterMetrics) -> JSONResponse:
    body = error_body(error, metrics)
    kind = ErrorKind(body.error.code)
    headers = {"WWW-Authenticate": "Bearer"} if kind is ErrorKind.UNAUTHENTICATED else {}
    if kind is ErrorKind.UNAVAILABLE:  # when a retry may succeed (a replica restarting, capacity freeing)
        headers["Retry-After"] = str(classify(error).retry_after_s or 1)
    return JSONResponse(body.model_dump(), status_code=HTTP_STATUS[kind], headers=headers or None)


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
            await error_response(e, self.metrics)(scope, receive, send)


def install_error_handlers(app: FastAPI, metrics: RouterMetrics) -> None:
    async def on_request_error(_: Request, error: Exception) -> JSONResponse:
        return error_response(error, metrics)

    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequestError(validation_message(error)), metrics)

    async def on_http_error(_: Request, error: HTTPException) -> JSONResponse:
        kind = ErrorKind.NOT_FOUND if error.status_code == 404 else ErrorKind.INVALID_REQUEST
        response = error_response(RequestError(kind, str(error.detail)), metrics)
        response.status_code = error.status_code
        return response

    async def on_disconnect(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(InvalidRequestError, on_request_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_middleware(InternalErrorMiddleware, metrics=metrics)
