"""Moving shared prefixes between a prefill worker's cache and the Redis host tier.

A prompt whose leading blocks were prefix-cache hits is evidently shared: those blocks are
written through to the host tier (once; later writers find them present), and announced
as held by the host tier. Another worker told to use them pulls the leading run still
present into fresh blocks and publishes them to its own prefix cache before it prefills.
"""

from __future__ import annotations

import asyncio

from engine.block_hash import ROOT_HASH, hash_blocks
from engine.kv_port import ImportedPrefix, KVPort
from kvstore.block_key import block_keys
from kvstore.host_tier import HostTier
from kvstore.keys import HOST_WORKER, RedisKeys, Tier
from kvstore.kv_events import KVEventPublisher
from kvstore.layout import KVLayout
from kvstore.store import KVStore
from kvstore.transport import HostTierTransport
from workers.spec import WorkerParts, WorkerSpec, until_redis_answers


class HostPrefixCache:
    def __init__(self, kv: KVPort, host: HostTier, publisher: KVEventPublisher, model_id: str):
        self.kv, self.host, self.publisher, self.model_id = kv, host, publisher, model_id
        self.tier = HostTierTransport(host, kv.cache)
        self.layout = KVLayout.of_cache(kv.cache)
        self.block_size = kv.block_size
        self.pulled_blocks = 0
        self.written_blocks = 0

    def _hashes(self, prompt: list[int], salt: str | None, n: int) -> list[bytes]:
        return hash_blocks(prompt[:n * self.block_size], self.block_size, (salt or "").encode())

    async def pull(self, prompt: list[int], salt: str | None, num_blocks: int) -> ImportedPrefix | None:
        """Copy up to ``num_blocks`` leading prompt blocks from the host tier into fresh blocks,
        for ``KVPort.hold``; None when nothing could be pulled."""
        hashes = self._hashes(prompt, salt, num_blocks)
        keys = block_keys(hashes, self.model_id, self.layout)
        present = await asyncio.to_thread(self.host.contains, keys)
        n = present.index(False) if False in present else len(present)
        block_ids = await self.kv.reserve_prefix(n) if n else None
        if not block_ids:
            return None
        try:
            await self.tier.receive(block_ids, keys[:n])
        except Exception:
            await self.kv.free_prefix(block_ids)
            raise
        self.pulled_blocks += n
        return ImportedPrefix(block_ids, hashes[:n])

    async def write_through(self, prompt: list[int], salt: str | None, block_ids: list[int], num_blocks: int) -> None:
        """Store the first ``num_blocks`` of a held prompt in the host tier (if not there yet)."""
        if num_blocks <= 0:
            return
        hashes = self._hashes(prompt, salt, num_blocks)
        keys = block_keys(hashes, self.model_id, self.layout)
        written = await self.tier.send(block_ids[:num_blocks], keys)
        self.written_blocks += written
        if written:
            parents = [ROOT_HASH] + hashes[:-1]
            await asyncio.to_thread(self.publisher.stored, list(zip(hashes, parents)), Tier.HOST)


def connect_host_prefix(spec: WorkerSpec, parts: WorkerParts) -> HostPrefixCache | None:
    """A prefill replica's host-tier prefix cache (None without a kvstore)."""
    kvstore = spec.kvstore
    if kvstore is None or parts.redis is None:
        return None
    store = until_redis_answers(lambda: KVStore.connect(kvstore), spec.worker_id)
    keys = RedisKeys(kvstore.key_prefix)
    return HostPrefixCache(parts.engine.kv_port, store.host, host_publisher(parts.redis, keys), spec.engine.model)


def host_publisher(client, keys) -> KVEventPublisher:
    """Events about the host tier are announced under its own holder name."""
    return KVEventPublisher(client, keys, HOST_WORKER)
