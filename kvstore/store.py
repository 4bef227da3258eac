"""One object holding a worker's view of the kvstore: index, leases and host tier."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from kvstore.block_index import BlockIndex
from kvstore.config import KVStoreConfig
from kvstore.host_tier import HostTier
from kvstore.keys import RedisKeys
from kvstore.leases import LeaseTable
from kvstore.redis_client import connect_redis


@dataclass
class KVStore:
    """Handles over one Redis connection; build with ``KVStore.connect(config)``."""

    config: KVStoreConfig
    redis: redis.Redis
    keys: RedisKeys
    index: BlockIndex
    leases: LeaseTable
    host: HostTier

    @classmethod
    def connect(cls, config: KVStoreConfig) -> KVStore:
        """Connect (RedisUnavailableError names the URL if Redis is down) and wire the parts."""
        client = connect_redis(config)
        keys = RedisKeys(config.key_prefix)
        index = BlockIndex(client, keys)
        leases = LeaseTable(client, keys, config.lease_ttl_s)
        return cls(config, client, keys, index, leases,
                   HostTier(client, keys, index, leases, config.host_tier_bytes,
                            codec=config.host_tier_codec,
                            residual_tokens=config.host_tier_codec_residual_tokens))

    def wipe(self) -> int:
        """Delete every key under the prefix (tests, shutdown of a private Redis)."""
        names = list(self.redis.scan_iter(match=f"{self.keys.prefix}:*", count=1000))
        for start in range(0, len(names), 1000):
            self.redis.unlink(*names[start:start + 1000])
        return len(names)

    def close(self) -> None:
        self.redis.close()
