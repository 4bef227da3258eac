"""Router configuration: where it listens, who may call it, how much and how fast."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

MiB = 1024 * 1024
AUTO_NAME = re.compile(r"key-[0-9]+")
NAMED_KEY = re.compile(r"([A-Za-z0-9_.-]{1,64})=([^=].*)", re.DOTALL)


class RouterConfigError(ValueError):
    """An invalid router setting; the message names the field."""


@dataclass(frozen=True)
class RouterConfig:
    """Ports 0 pick free ports (Router reports the bound ones); ``grpc_port``/``http_port``
    None leaves that server off. ``host`` defaults to loopback: give 0.0.0.0 to serve others.

    api_keys: accepted ``authorization: Bearer <key>`` values on /v1/* and the Generation
    service, each ``KEY`` or ``NAME=KEY``; empty means no authentication. Each key is a
    tenant (named ``key-1``, ``key-2``, ... by position when unnamed; keys sharing a name are
    one tenant): its prefix-cache salt is applied to every request, and rate limits count
    per tenant. /health, /metrics, gRPC health and reflection stay open.
    cache_salt_secret: the HMAC key tenant salts are derived with (None: random per router
    process, so cached prefixes do not outlive it; set one to keep them across restarts).
    model_name: the name clients address (default: the backend's).
    request_timeout_s: the longest a request may run before it is aborted (None: no limit).
    max_request_bytes: the largest HTTP body or gRPC message accepted (413 / RESOURCE_EXHAUSTED).
    rate_limit_rps, rate_limit_burst: a token bucket per tenant (None: no limit; the burst
    defaults to the rate rounded up, at least 1); over it: 429 / RESOURCE_EXHAUSTED.
    idle_timeout_s: an open connection without requests is closed after this long.
    read_timeout_s: an HTTP request's headers and body must arrive within this time of its
    first byte (slow clients are cut off); also the gRPC connection handshake's limit.
    tls_cert, tls_key: PEM files; both set serves HTTPS and gRPC over TLS.
    tls_client_ca: PEM CA bundle; set, clients must present a certificate it signed (mTLS).
    """

    host: str = "127.0.0.1"
    grpc_port: int | None = 50051
    http_port: int | None = 8000
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr or a log line
    cache_salt_secret: str | None = field(default=None, repr=False)
    model_name: str | None = None
    request_timeout_s: float | None = 600.0
    shutdown_grace_s: float = 5.0
    max_request_bytes: int = 2 * MiB
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    idle_timeout_s: float = 30.0
    read_timeout_s: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

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
        parse_api_keys(self.api_keys)
        if self.cache_salt_secret is not None and len(self.cache_salt_secret) < 16:
            raise RouterConfigError("cache_salt_secret must be None or at least 16 characters")
        if self.model_name is not None and not self.model_name:
            raise RouterConfigError("model_name must be None or a non-empty string")
        self._check_limits()
        self._check_tls()

    def _check_limits(self) -> None:
        for name in ("request_timeout_s", "rate_limit_rps"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise RouterConfigError(f"{name} must be None or a finite number > 0, got {value!r}")
        for name in ("idle_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise RouterConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not self.shutdown_grace_s >= 0:
            raise RouterConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if not isinstance(self.max_request_bytes, int) or not 1024 <= self.max_request_bytes <= 2**31 - 1:
            raise RouterConfigError(f"max_request_bytes must be an integer in [1024, 2**31 - 1], "
                                    f"got {self.max_request_bytes!r}")
        if self.rate_limit_burst is not None:
            if self.rate_limit_rps is None:
                raise RouterConfigError("rate_limit_burst needs rate_limit_rps")
            if not isinstance(self.rate_limit_burst, int) or self.rate_limit_burst < 1:
                raise RouterConfigError(f"rate_limit_burst must be None or an integer >= 1, "
                                        f"got {self.rate_limit_burst!r}")

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise RouterConfigError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise RouterConfigError("tls_client_ca needs tls_cert and tls_key (client certificates need TLS)")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise RouterConfigError(f"{name}: {path!r} is not a readable file")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def burst(self) -> int:
        """The rate limit's bucket size."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_rps or 1))


def parse_api_keys(entries: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``KEY`` or ``NAME=KEY`` entries as (tenant name, key); unnamed keys are key-1, key-2, ...

    An entry is NAME=KEY when it starts with a name (letters, digits, '_', '.', '-') and an
    '=' that is not followed by another '=' (so base64 padding stays part of a plain key).
    """
    pairs, seen = [], set()
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, str) or not entry or entry != entry.strip():
            raise RouterConfigError("api_keys must be non-empty strings without surrounding whitespace")
        named = NAMED_KEY.fullmatch(entry)
        name, key = named.groups() if named else (f"key-{i}", entry)
        if named and AUTO_NAME.fullmatch(name):
            raise RouterConfigError(f"api_keys: tenant name {name!r} is reserved for unnamed keys")
        if not key.isprintable() or any(c.isspace() for c in key):
            raise RouterConfigError(f"api_keys: the key of tenant {name!r} has whitespace or unprintable characters")
        if key in seen:
            raise RouterConfigError(f"api_keys: a key is listed twice (tenant {name!r})")
        seen.add(key)
        pairs.append((name, key))
    return tuple(pairs)
