"""Router configuration: where it listens, who may call it, how long a request may run."""

from __future__ import annotations

from dataclasses import dataclass


class RouterConfigError(ValueError):
    """An invalid router setting; the message names the field."""


@dataclass(frozen=True)
class RouterConfig:
    """Ports 0 pick free ports (Router reports the bound ones); ``grpc_port``/``http_port``
    None leaves that server off.

    api_keys: accepted ``authorization: Bearer <key>`` values on /v1/* and the Generation
    service; empty means no authentication. /health, /metrics, gRPC health and reflection
    stay open. model_name: the name clients address (default: the backend's).
    request_timeout_s: the longest a request may run before it is aborted (None: no limit).
    """

    host: str = "127.0.0.1"
    grpc_port: int | None = 50051
    http_port: int | None = 8000
    api_keys: tuple[str, ...] = ()
    model_name: str | None = None
    request_timeout_s: float | None = 600.0
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        if not self.host:
            raise RouterConfigError("host must be a non-empty address, e.g. 127.0.0.1 or 0.0.0.0")
        for name in ("grpc_port", "http_port"):
            port = getattr(self, name)
            if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
                raise RouterConfigError(f"{name} must be None or an integer in [0, 65535], got {port!r}")
        if self.grpc_port is None and self.http_port is None:
            raise RouterConfigError("at least one of grpc_port and http_port must be set")
        if self.grpc_port and self.grpc_port == self.http_port:
            raise RouterConfigError(f"grpc_port and http_port must differ, both are {self.grpc_port}")
        if any(not isinstance(k, str) or not k or k != k.strip() for k in self.api_keys):
            raise RouterConfigError("api_keys must be non-empty strings without surrounding whitespace")
        if self.model_name is not None and not self.model_name:
            raise RouterConfigError("model_name must be None or a non-empty string")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise RouterConfigError(f"request_timeout_s must be None or > 0, got {self.request_timeout_s}")
        if not self.shutdown_grace_s >= 0:
            raise RouterConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
