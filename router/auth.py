"""API keys as tenants: who a caller is, shared by gRPC and HTTP.

Each configured key belongs to a tenant. A tenant's prefix-cache salt is an HMAC of its
name under the router's secret, so it is neither the key nor guessable from outside, and
requests of different tenants never share cached prefix blocks: a tenant cannot learn
another's prompts from ``cached_tokens`` or time to first token. A client's own
``cache_salt`` is appended to its tenant's salt, so it can only narrow sharing further.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from router.config import parse_api_keys
from router.errors import ErrorKind, RequestError


@dataclass(frozen=True)
class Tenant:
    """name: for logs, metrics and rate limits. salt: "" when no keys are configured."""

    name: str
    salt: str = ""

    def cache_salt(self, client_salt: str | None) -> str | None:
        """The salt a request runs with: the tenant's, then the client's own."""
        salt = self.salt + (client_salt or "")
        return salt or None


ANONYMOUS = Tenant("anonymous")


def tenant_salt(secret: bytes, name: str) -> str:
    return hmac.new(secret, b"tierserve-cache-salt\0" + name.encode(), hashlib.sha256).hexdigest()


class ApiKeyCheck:
    """Maps ``authorization: Bearer <key>`` to a tenant; with no keys every caller is ANONYMOUS.

    ``api_keys`` as RouterConfig takes them (``KEY`` or ``NAME=KEY``); ``secret`` keys the
    tenants' salts (None: a random one, so salts differ from every other router's).
    """

    def __init__(self, api_keys: tuple[str, ...], secret: bytes | None = None):
        secret = secret or secrets.token_bytes(32)
        self._keys = tuple((key.encode(), Tenant(name, tenant_salt(secret, name)))
                           for name, key in parse_api_keys(api_keys))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> Tenant:
        """The caller's tenant; RequestError(UNAUTHENTICATED) without an accepted key."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise RequestError(ErrorKind.UNAUTHENTICATED,
                               "missing API key: send the header 'Authorization: Bearer <key>'")
        given = key.strip().encode("utf-8", "replace")
        found = None
        for k, tenant in self._keys:  # compare with every key: the time taken does not tell which matched
            if hmac.compare_digest(given, k):
                found = tenant
        if found is None:
            raise RequestError(ErrorKind.UNAUTHENTICATED, "invalid API key")
        return found
