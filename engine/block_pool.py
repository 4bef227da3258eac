"""Physical KV blocks: a free list, reference counts and (optionally) a content-hash cache.

A block whose refcount drops to zero goes to the tail of the free queue but keeps its
hash: until it is reallocated, a later request with the same prefix can take it back
(prefix caching). Allocation pops from the head, so the least recently freed block is
evicted first. A block computed with content another block already holds (two requests
prefilling one prompt in the same step) stays private but on standby: if the cached copy is
evicted while the standby block is still in use, it becomes the cached copy instead, so
each block needs offering only once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from engine.block_hash import BlockHash


@dataclass
class BlockEvents:
    """Hashes that became reusable (stored, with their parent's hash) or stopped being so
    (evicted) since last drained."""

    stored: list[tuple[BlockHash, BlockHash]] = field(default_factory=list)
    evicted: list[BlockHash] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stored or self.evicted)


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = False):
        if num_blocks < 1:
            raise ValueError(f"a block pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[BlockHash, int] = {}
        self.standby: dict[BlockHash, dict[int, None]] = {}  # hash -> in-use private blocks holding it
        self.standby_hash: dict[int, BlockHash] = {}        # such a block -> its content
        self.events = BlockEvents()

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks off the free queue (refcount 1), evicting their cached hashes."""
        if n > self.num_free:
            raise RuntimeError(f"asked for {n} blocks with {self.num_free} free")
        ids = []
        for _ in range(n):
            block_id, _ = self.free_queue.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            ids.append(block_id)
        return ids

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference from each block; the last block of a sequence is queued first
        so that a shared prefix outlives its suffixes."""
        for block_id in reversed(block_ids):
            if self.ref_counts[block_id] <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self._leave_standby(block_id)
                if self.block_hash[block_id] is None:
                    self.free_queue[block_id] = None
                    self.free_queue.move_to_end(block_id, last=False)
                else:
                    self.free_queue[block_id] = None

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The block holding this content, if cached."""
        return self.cached.get(block_hash) if self.enable_caching else None

    def take(self, block_id: int) -> None:
        """Add a reference to a cached block (reviving it from the free queue if idle)."""
        if self.ref_counts[block_id] == 0:
            del self.free_queue[block_id]
        self.ref_counts[block_id] += 1

    def commit(self, block_id: int, block_hash: BlockHash, parent_hash: BlockHash) -> None:
        """Record that a full, computed block holds content ``block_hash``."""
        if not self.enable_caching or self.block_hash[block_id] is not None:
            return
        if block_hash in self.cached:  # another block holds this content: this one stays private
            self.standby.setdefault(block_hash, {})[block_id] = None
            self.standby_hash[block_id] = block_hash
            return
        self.block_hash[block_id] = block_hash
        self.cached[block_hash] = block_id
        self.events.stored.append((block_hash, parent_hash))

    def reset_cache(self) -> None:
        """Forget every cached hash (blocks in use keep their data)."""
        self.standby.clear()
        self.standby_hash.clear()
        for block_id, h in enumerate(self.block_hash):
            if h is not None:
                self._evict(block_id)

    def drain_events(self) -> BlockEvents:
        events, self.events = self.events, BlockEvents()
        return events

    def _evict(self, block_id: int) -> None:
        h = self.block_hash[block_id]
        if h is None:
            return
        self.block_hash[block_id] = None
        waiting = self.standby.get(h)
        if waiting:  # a block in use holds the same content: it takes over, nothing is lost
            heir = next(iter(waiting))
            self._leave_standby(heir)
            self.block_hash[heir] = h
            self.cached[h] = heir
            return
        del self.cached[h]
        self.events.evicted.append(h)

    def _leave_standby(self, block_id: int) -> None:
        h = self.standby_hash.pop(block_id, None)
        if h is not None:
            holders = self.standby[h]
            del holders[block_id]
            if not holders:
                del self.standby[h]
