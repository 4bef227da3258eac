"""Who is calling and whether they may: decided from headers or metadata alone, before a
request's body is read or parsed."""

from __future__ import annotations

from router.auth import ApiKeyCheck, Tenant
from router.rate_limit import RateLimiter


class Gate:
    """The API-key check, then the caller's tenant's rate limit."""

    def __init__(self, auth: ApiKeyCheck, limiter: RateLimiter):
        self.auth = auth
        self.limiter = limiter

    def admit(self, authorization: str | None) -> Tenant:
        """The caller's tenant; RequestError (UNAUTHENTICATED or RATE_LIMITED) otherwise."""
        tenant = self.auth.check(authorization)
        self.limiter.admit(tenant)
        return tenant
