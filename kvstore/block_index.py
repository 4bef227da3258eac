"""Which worker and tier holds which block, kept in Redis.

Every holder (worker id + tier) has an LRU sorted set of its blocks; every block has a
hash of its holders. Adds, removals and touches run as Lua scripts, so the two never
disagree. Readers pin blocks with leases (kvstore.leases) while they pull them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from kvstore import lua
from kvstore.block_key import BlockKey
from kvstore.keys import Holder, RedisKeys, Tier, holder_field, parse_holder

_BATCH = 512


class BlockIndex:
    """The cluster-wide block directory."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self._redis = client
        self._keys = keys
        self._add = client.register_script(lua.ADD)
        self._remove = client.register_script(lua.REMOVE)
        self._touch = client.register_script(lua.TOUCH)

    def add(self, worker_id: str, tier: Tier, keys: Sequence[BlockKey], slots: Sequence[int]) -> None:
        """Record that ``worker_id`` holds ``keys`` in ``tier`` at ``slots``; marks them used."""
        if len(keys) != len(slots):
            raise ValueError(f"add: {len(keys)} keys but {len(slots)} slots")
        names = [str(k) for k in keys]
        for start in range(0, len(names), _BATCH):
            part = names[start:start + _BATCH]
            self._add(keys=[self._keys.lru(worker_id, tier), self._keys.clock,
                            *map(self._keys.loc, part)],
                      args=[holder_field(worker_id, tier), *part, *slots[start:start + _BATCH]])

    def remove(self, worker_id: str, tier: Tier, keys: Sequence[BlockKey | str]) -> int:
        """Forget ``worker_id``'s copies of ``keys`` in ``tier``; returns how many it had."""
        names = [str(k) for k in keys]
        removed = 0
        for start in range(0, len(names), _BATCH):
            part = names[start:start + _BATCH]
            removed += self._remove(keys=[self._keys.lru(worker_id, tier), *map(self._keys.loc, part)],
                                    args=[holder_field(worker_id, tier), *part])
        return removed

    def touch(self, worker_id: str, tier: Tier, keys: Sequence[BlockKey]) -> None:
        """Mark the holder's copies of ``keys`` as just used (earlier keys stay newer)."""
        self._touch(keys=[self._keys.lru(worker_id, tier), self._keys.clock], args=[str(k) for k in keys])

    def deregister(self, worker_id: str) -> int:
        """Remove every entry of ``worker_id`` in every tier; returns how many there were."""
        removed = 0
        for tier in Tier:
            lru_key = self._keys.lru(worker_id, tier)
            while members := self._redis.zrange(lru_key, 0, _BATCH - 1):
                removed += self.remove(worker_id, tier, [m.decode() for m in cast("list[bytes]", members)])
        return removed

    def holders(self, key: BlockKey) -> tuple[Holder, ...]:
        """Every copy of one block."""
        return _parse(cast("dict[bytes, bytes]", self._redis.hgetall(self._keys.loc(str(key)))))  # replies are bytes

    def lookup_prefix(self, keys: Sequence[BlockKey]) -> list[tuple[Holder, ...]]:
        """Holders of the longest leading run of ``keys`` that someone holds (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._keys.loc(str(key)))
        run: list[tuple[Holder, ...]] = []
        for entry in pipe.execute():
            if not entry:
                break
            run.append(_parse(entry))
        return run

    def lru_order(self, worker_id: str, tier: Tier, limit: int = -1) -> list[str]:
        """The holder's block keys, least recently used first (eviction order)."""
        stop = -1 if limit < 0 else limit - 1
        members = cast("list[bytes]", self._redis.zrange(self._keys.lru(worker_id, tier), 0, stop))
        return [m.decode() for m in members]

    def count(self, worker_id: str, tier: Tier) -> int:
        """How many blocks the holder has in the index."""
        return int(self._redis.zcard(self._keys.lru(worker_id, tier)))


def _parse(entry: dict[bytes, bytes]) -> tuple[Holder, ...]:
    return tuple(sorted((parse_holder(f, s) for f, s in entry.items()), key=lambda h: h.field))
