"""API-key checks on an ``authorization: Bearer <key>`` header, shared by gRPC and HTTP."""

from __future__ import annotations

import hmac

from router.errors import ErrorKind, RequestError


class ApiKeyCheck:
    """Accepts any of ``keys``; with no keys configured every caller is accepted."""

    def __init__(self, keys: tuple[str, ...]):
        self._keys = tuple(k.encode() for k in keys)

    def check(self, authorization: str | None) -> None:
        """Raise RequestError(UNAUTHENTICATED) unless the header carries an accepted key."""
        if not self._keys:
            return
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise RequestError(ErrorKind.UNAUTHENTICATED,
                               "missing API key: send the header 'Authorization: Bearer <key>'")
        given = key.strip().encode()
        # compare against every key so the time taken does not reveal which one matched
        if not sum(hmac.compare_digest(given, k) for k in self._keys):
            raise RequestError(ErrorKind.UNAUTHENTICATED, "invalid API key")
