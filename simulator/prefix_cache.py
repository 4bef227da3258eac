"""A replica's prefix cache: an LRU set of prompt block hashes (hashes are prefix-chained, as in
Mooncake traces, so a prompt hits the leading run of its blocks that is cached)."""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    __slots__ = ("capacity", "blocks")

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = max(0, capacity_blocks)
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def peek(self, hash_ids: tuple[int, ...]) -> int:
        """Leading blocks cached, without touching them."""
        n = 0
        for h in hash_ids:
            if h not in self.blocks:
                break
            n += 1
        return n

    def lookup(self, hash_ids: tuple[int, ...]) -> int:
        """Leading blocks cached; each hit becomes most recently used."""
        n = self.peek(hash_ids)
        for h in hash_ids[:n]:
            self.blocks.move_to_end(h)
        return n

    def insert(self, hash_ids: tuple[int, ...]) -> None:
        """Cache a prompt's blocks, evicting the least recently used beyond capacity."""
        blocks = self.blocks
        for h in hash_ids:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        self.evict()

    def evict(self) -> None:
        """Drop the least recently used blocks beyond capacity."""
        blocks = self.blocks
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)


class PagedPrefixCache(PrefixCache):
    """The prefix cache of a replica whose KV lives in blocks that running requests and the cache
    share (our engine's block pool; vLLM's): a block is stored once however many requests use it.
    Blocks a running request uses are pinned and never evicted; idle ones are evicted least
    recently used. The replica sets ``capacity`` to the blocks its requests' own KV leaves."""

    __slots__ = ("pins",)

    def __init__(self, capacity_blocks: int) -> None:
        super().__init__(capacity_blocks)
        self.pins: dict[int, int] = {}  # hash -> running requests using it (all of them cached)

    def unpinned(self, hash_ids: tuple[int, ...]) -> int:
        """How many of these (distinct) blocks are not pinned yet."""
        pins = self.pins
        return sum(1 for h in hash_ids if h not in pins)

    def pin(self, hash_ids: tuple[int, ...]) -> None:
        pins = self.pins
        for h in hash_ids:
            pins[h] = pins.get(h, 0) + 1

    def unpin(self, hash_ids: tuple[int, ...]) -> None:
        pins = self.pins
        for h in hash_ids:
            n = pins[h] - 1
            if n:
                pins[h] = n
            else:
                del pins[h]

    def release(self, hash_ids: tuple[int, ...]) -> None:
        """Unpin a sequence's blocks (all cached: pinned ones are never evicted), each becoming the
        most recently used, the last block first: the engine frees a sequence's blocks last to
        first, so a shared prefix outlives its suffixes."""
        self.unpin(hash_ids)
        touch = self.blocks.move_to_end
        for h in reversed(hash_ids):
            touch(h)

    def evict(self) -> None:
        """Drop the least recently used unpinned blocks beyond capacity (pinned ones stay)."""
        blocks, pins = self.blocks, self.pins
        excess = len(blocks) - self.capacity
        if excess <= 0:
            return
        victims = []
        for h in blocks:
            if h not in pins:
                victims.append(h)
                if len(victims) == excess:
                    break
        for h in victims:
            del blocks[h]
