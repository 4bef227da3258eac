"""Per-tenant request rate limits: one token bucket per tenant, checked before a body is read."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from router.auth import Tenant
from router.errors import ErrorKind, RequestError


class TokenBucket:
    """``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> float:
        """Spend one token: 0 if there was one, else the seconds until there will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """Buckets by tenant name; ``rate`` None admits everything."""

    def __init__(self, rate: float | None, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, tenant: Tenant) -> None:
        """Raise RequestError(RATE_LIMITED) with ``retry_after_s`` when the tenant is over its rate."""
        if self.rate is None:
            return
        now = self.clock()
        bucket = self._buckets.get(tenant.name)
        if bucket is None:
            bucket = self._buckets[tenant.name] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            raise RequestError(ErrorKind.RATE_LIMITED,
                               f"rate limit exceeded ({self.rate:g} requests/s, burst {self.burst}); "
                               f"retry after {math.ceil(wait)} s", retry_after_s=wait)
