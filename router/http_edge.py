"""The first thing every HTTP request meets: its id, the caller's tenant, the size limit.

/v1/* requests (and /tokenize, /detokenize: request-sized work too) are authenticated and
rate-limited from their headers alone, so a bad key or a flood costs no body read or parse.
A body over the limit is refused with 413 as soon as its declared length, or the bytes
received so far, pass it. The rest of a refused body is discarded as it arrives (uvicorn
does that once the response is out), not parsed or kept, so the client reads its answer
instead of a connection reset; the read deadline (router/http_connections.py) bounds how
long that may take. Every response carries ``x-request-id``: the client's own (vLLM's
passthrough), else the one the router gave the request.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.sampling_params import InvalidRequestError
from router.client_input import check_request_id, new_request_id
from router.errors import ErrorKind, RequestError
from router.gate import Gate
from router.http_errors import error_response
from router.metrics import RouterMetrics

REQUEST_ID_HEADER = "x-request-id"
GATED_PATHS = ("/tokenize", "/detokenize")   # besides /v1/*


class BodyLimit:
    """Counts a request's body bytes as the app receives them; RequestError(TOO_LARGE) past ``limit``."""

    def __init__(self, receive: Receive, limit: int):
        self._receive = receive
        self.limit = limit
        self.received = 0

    def check_declared(self, content_length: str | None) -> None:
        if content_length is not None and content_length.isdigit() and int(content_length) > self.limit:
            raise self.too_large()

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise self.too_large()
        return message

    def too_large(self) -> RequestError:
        return RequestError(ErrorKind.TOO_LARGE, f"request body is larger than the limit of {self.limit} bytes")


class EdgeMiddleware:
    """Request id, API key and rate limit (for /v1/* and GATED_PATHS), body size limit; then the app."""

    def __init__(self, app: ASGIApp, gate: Gate, metrics: RouterMetrics, max_body_bytes: int):
        self.app = app
        self.gate = gate
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = new_request_id("req"), False
        body = BodyLimit(receive, self.max_body_bytes)
        send = stamped(send, state)
        try:
            given = headers.get(REQUEST_ID_HEADER)
            if given is not None:
                state["request_id"], state["client_request_id"] = check_request_id(given, REQUEST_ID_HEADER), True
            if scope["path"].startswith("/v1/") or scope["path"] in GATED_PATHS:
                state["tenant"] = self.gate.admit(headers.get("authorization"))
            body.check_declared(headers.get("content-length"))
        except (RequestError, InvalidRequestError) as e:
            await error_response(e, self.metrics, scope)(scope, receive, send)
            return
        await self.app(scope, body.receive, send)


def stamped(send: Send, state: dict) -> Send:
    """``send`` that adds x-request-id (as it is when the response starts) to the response."""
    async def send_stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            stamp = (REQUEST_ID_HEADER.encode(), state["request_id"].encode())
            message = {**message, "headers": [*message.get("headers", []), stamp]}
        await send(message)
    return send_stamped
