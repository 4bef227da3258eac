"""Why a request failed, in terms both front ends map to their own status codes.

Clients get a plain message: their own mistakes are named (field and problem); failures on
our side say only what kind they were and the request id, with the details in the log.
"""

from __future__ import annotations

import logging
import re
from enum import Enum

from engine.sampling_params import InvalidRequestError

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 1000
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"     # gRPC INVALID_ARGUMENT, HTTP 400
    UNAUTHENTICATED = "unauthenticated"     # gRPC UNAUTHENTICATED, HTTP 401
    NOT_FOUND = "not_found"                 # gRPC NOT_FOUND, HTTP 404
    TOO_LARGE = "too_large"                 # gRPC RESOURCE_EXHAUSTED, HTTP 413
    RATE_LIMITED = "rate_limited"           # gRPC RESOURCE_EXHAUSTED, HTTP 429
    TIMEOUT = "timeout"                     # gRPC DEADLINE_EXCEEDED, HTTP 504
    UNAVAILABLE = "unavailable"             # gRPC UNAVAILABLE, HTTP 503
    INTERNAL = "internal"                   # gRPC INTERNAL, HTTP 500


class ServiceUnavailableError(RuntimeError):
    """The backend cannot serve the request now (no capacity, a replica lost); a retry may succeed,
    after about ``retry_after_s`` (HTTP Retry-After, gRPC ``retry-after`` trailing metadata)."""

    retry_after_s: int = 2

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class RequestError(Exception):
    """A request the router refuses or could not serve; ``str(e)`` is for the client."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s  # UNAVAILABLE, RATE_LIMITED: when a retry may succeed


class RequestTimeoutError(RequestError):
    def __init__(self, timeout_s: float):
        super().__init__(ErrorKind.TIMEOUT, f"request exceeded the router's request timeout of {timeout_s:g} s "
                                            "and was aborted")


def classify(error: Exception, request_id: str, backend_id: str | None = None) -> RequestError:
    """The client-facing form of any error raised while serving request ``request_id``.

    Unexpected errors (and the details of unavailable backends) are logged here with the
    request id (and ``backend_id``, the id the backend knows it by, when that differs); the
    client sees a generic message carrying the request id.
    """
    logged = request_id if backend_id in (None, request_id) else f"{request_id} (backend id {backend_id})"
    error = remote_cause(error)
    if isinstance(error, RequestError):
        return RequestError(error.kind, plain(str(error)), error.retry_after_s)
    if isinstance(error, InvalidRequestError):
        return RequestError(ErrorKind.INVALID_REQUEST, plain(str(error)))
    if isinstance(error, ServiceUnavailableError):
        log.warning("request %s: backend unavailable: %s", logged, error)
        return RequestError(ErrorKind.UNAVAILABLE, f"service unavailable, retry later (request id {request_id})",
                            retry_after_s=error.retry_after_s)
    log.error("request %s failed", logged, exc_info=error)
    return RequestError(ErrorKind.INTERNAL, f"internal error (request id {request_id})")


def remote_cause(error: Exception) -> Exception:
    """The original error behind a Ray task error.

    Ray re-raises a remote exception as a class deriving from both RayTaskError and the
    cause's class, so it passes the cause's isinstance checks, but its str() is the remote
    traceback (paths, PIDs, node address); ``cause`` holds the plain original.
    """
    cause = getattr(error, "cause", None)
    if isinstance(cause, Exception) and type(error).__name__.startswith("RayTaskError"):
        return cause
    return error


def plain(message: str) -> str:
    """One line of text for a client: no terminal escapes or control characters, bounded."""
    text = ANSI_ESCAPE.sub("", message)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."
