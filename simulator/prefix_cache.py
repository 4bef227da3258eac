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
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
