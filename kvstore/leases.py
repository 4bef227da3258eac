"""Leases: a reader pins blocks while it pulls them, so they are not evicted under it.

A block's pins are a sorted set of lease id -> expiry; its refcount is the number of
live pins. Expired pins are dropped lazily by every script that looks at them, and the
set itself carries a Redis TTL, so a crashed reader leaves nothing behind for long.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from kvstore import lua
from kvstore.block_key import BlockKey
from kvstore.keys import RedisKeys


@dataclass(frozen=True)
class Lease:
    """Pins on ``keys`` (the leading run of the requested keys that was held)."""

    lease_id: str
    keys: tuple[str, ...]
    requested: int

    @property
    def complete(self) -> bool:
        """True when every requested block was pinned."""
        return len(self.keys) == self.requested


class LeaseTable:
    """Acquire, renew and release leases on blocks."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be > 0, got {ttl_s}")
        self._redis = client
        self._keys = keys
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._acquire = client.register_script(lua.ACQUIRE)
        self._release = client.register_script(lua.RELEASE)
        self._pin_count = client.register_script(lua.PIN_COUNT)

    def acquire(self, keys: Sequence[BlockKey]) -> Lease:
        """Pin the longest leading run of ``keys`` that is held by someone."""
        names = [str(k) for k in keys]
        lease_id = uuid.uuid4().hex
        pinned = self._acquire(keys=[*map(self._keys.loc, names), *map(self._keys.pin, names)],
                               args=[lease_id, self._ttl_ms])
        return Lease(lease_id, tuple(names[:int(pinned)]), len(names))

    def renew(self, lease: Lease) -> int:
        """Extend the lease's pins by the TTL; returns how many blocks are still held."""
        return int(self._acquire(keys=[*map(self._keys.loc, lease.keys), *map(self._keys.pin, lease.keys)],
                                 args=[lease.lease_id, self._ttl_ms]))

    def release(self, lease: Lease) -> None:
        """Drop the lease's pins (idempotent)."""
        if lease.keys:
            self._release(keys=[self._keys.pin(k) for k in lease.keys], args=[lease.lease_id])

    @contextmanager
    def pinned(self, keys: Sequence[BlockKey]) -> Iterator[Lease]:
        """``with leases.pinned(keys) as lease:`` pins for the block's duration."""
        lease = self.acquire(keys)
        try:
            yield lease
        finally:
            self.release(lease)

    def refcount(self, key: BlockKey | str) -> int:
        """Live leases on one block."""
        return int(self._pin_count(keys=[self._keys.pin(str(key))]))

    def pinned_blocks(self) -> int:
        """Blocks with at least one live lease, store-wide (0 when nothing leaks)."""
        pattern = self._keys.pin("*")
        return sum(self.refcount(k.decode().rsplit(":", 1)[1]) > 0
                   for k in self._redis.scan_iter(match=pattern, count=1000))
