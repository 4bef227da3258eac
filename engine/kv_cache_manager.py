"""Which blocks each request's KV lives in: allocation, prefix-cache hits and release.

The scheduler talks to this class only; it never touches the block pool directly.
"""

from __future__ import annotations

from typing import cast

from engine.block_hash import ROOT_HASH, BlockHash, hash_block
from engine.block_pool import BlockEvents, BlockPool
from engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def match_prefix(self, request: Request) -> int:
        """Attach cached blocks for the longest cached prefix of a request that holds no blocks;
        returns the number of tokens whose KV is already there (always < the request's tokens)."""
        if not self.pool.enable_caching or request.block_ids:
            return 0
        n = min(self.cached_prefix_blocks(request), (request.num_tokens - 1) // self.block_size)
        # the last token is always computed; cached_prefix_blocks found these n blocks, so no lookup is None
        hits = cast("list[int]", [self.pool.lookup(h) for h in request.block_hashes[:n]])
        for block_id in hits:
            self.pool.take(block_id)
        request.block_ids = hits
        request.num_committed_blocks = len(hits)
        return len(hits) * self.block_size

    def cached_prefix_blocks(self, request: Request) -> int:
        """How many leading blocks of a request are in the prefix cache (nothing is taken)."""
        self._extend_hashes(request, request.num_known_tokens)
        count = 0
        for h in request.block_hashes:
            if self.pool.lookup(h) is None:
                break
            count += 1
        return count

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for ``num_new_tokens`` more computed tokens; False (and no change) if the
        pool cannot."""
        needed = self.blocks_needed(request.num_computed_tokens + num_new_tokens) - len(request.block_ids)
        if needed <= 0:
            return True
        if needed > self.pool.num_free:
            return False
        request.block_ids.extend(self.pool.allocate(needed))
        return True

    def commit_computed(self, request: Request) -> None:
        """Publish the full blocks whose KV became computed since the last call to the prefix
        cache (each block is offered once: a decode step costs O(1), not O(context))."""
        if not self.pool.enable_caching:
            return
        first = request.num_committed_blocks
        full = min(request.num_computed_tokens, request.num_known_tokens) // self.block_size  # ids known
        if request.exact_tokens is not None:  # a reused segment's approximation: never a prefix hit
            full = min(full, request.exact_tokens // self.block_size)
        if full <= first:
            return
        self._extend_hashes(request, full * self.block_size)
        hashes = request.block_hashes
        for i in range(first, full):
            self.pool.commit(request.block_ids[i], hashes[i], hashes[i - 1] if i else ROOT_HASH)
        request.num_committed_blocks = full

    def count_lookup(self, query_tokens: int, hit_tokens: int) -> None:
        """Record one admitted request's prefix-cache lookup (retries are not counted again)."""
        self.prefix_queries += query_tokens
        self.prefix_hits += hit_tokens

    def reserve_import(self, num_blocks: int) -> list[int] | None:
        """Blocks to copy KV from elsewhere into (the host tier); None if the pool lacks room."""
        if not self.pool.enable_caching or num_blocks > self.pool.num_free:
            return None
        return self.pool.allocate(num_blocks)

    def commit_import(self, block_ids: list[int], hashes: list[BlockHash]) -> None:
        """Publish imported blocks (a chain from the root) to the prefix cache, unreferenced:
        they stay until evicted, and any request with that prefix takes them."""
        parents = [ROOT_HASH] + hashes[:-1]
        for block_id, h, parent in zip(block_ids, hashes, parents):
            self.pool.commit(block_id, h, parent)
        self.pool.free(block_ids)

    def cancel_import(self, block_ids: list[int]) -> None:
        """Give back blocks from ``reserve_import`` whose copy failed (nothing is published)."""
        self.pool.free(block_ids)

    def drain_events(self) -> BlockEvents:
        """The pool's stored / evicted hashes since the last drain (kv_event_pump publishes them)."""
        return self.pool.drain_events()

    def free(self, request: Request) -> None:
        self.pool.free(request.block_ids)
        request.block_ids = []
        request.num_committed_blocks = 0

    def _extend_hashes(self, request: Request, num_tokens: int) -> None:
        bs = self.block_size
        for i in range(len(request.block_hashes), num_tokens // bs):
            parent = request.block_hashes[-1] if request.block_hashes else ROOT_HASH
            tokens = request.token_ids(i * bs, (i + 1) * bs)
            request.block_hashes.append(hash_block(parent, tokens, request.cache_salt))
