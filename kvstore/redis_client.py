"""Connecting to Redis with an error that names the URL (never its password) when it is unreachable."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis

from kvstore.config import KVStoreConfig
from kvstore.errors import RedisUnavailableError


def connect_redis(config: KVStoreConfig) -> redis.Redis:
    """A client for ``config.redis_url`` that has answered a PING.

    Raises RedisUnavailableError naming the URL if it cannot be reached.
    """
    client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=config.connect_timeout_s,
                                  health_check_interval=30)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        client.close()
        raise RedisUnavailableError(
            f"cannot reach Redis at {redact_url(config.redis_url)}: {exc}. Start redis-server there or "
            f"set kvstore.redis_url to a running one") from exc
    return client


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the form to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"))
