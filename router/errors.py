"""Why a request failed, in terms both front ends map to their own status codes."""

from __future__ import annotations

from enum import Enum

from engine.sampling_params import InvalidRequestError


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"     # gRPC INVALID_ARGUMENT, HTTP 400
    UNAUTHENTICATED = "unauthenticated"     # gRPC UNAUTHENTICATED, HTTP 401
    NOT_FOUND = "not_found"                 # gRPC NOT_FOUND, HTTP 404
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

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s  # set for UNAVAILABLE: when a retry may succeed


class RequestTimeoutError(RequestError):
    def __init__(self, timeout_s: float):
        super().__init__(ErrorKind.TIMEOUT, f"request exceeded the router's request timeout of {timeout_s:g} s "
                                            "and was aborted")


def classify(error: Exception) -> RequestError:
    """The client-facing form of any error raised while serving a request."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, InvalidRequestError):
        return RequestError(ErrorKind.INVALID_REQUEST, str(error))
    if isinstance(error, ServiceUnavailableError):
        return RequestError(ErrorKind.UNAVAILABLE, f"service unavailable, retry later: {error}",
                            error.retry_after_s)
    return RequestError(ErrorKind.INTERNAL, f"internal error: {type(error).__name__}: {error}")
