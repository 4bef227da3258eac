"""The router's global prefix index: a radix tree over chained block hashes.

Each node is one full KV block, identified by its chained hash (so a node stands for the
whole prefix up to it); it records which workers hold it and in which tier. Fed by the
workers' KV events; asked, for a request's block hashes, how many leading blocks each
worker holds.

Events arrive only once a prefill has stored its blocks, so requests sharing a new prefix
that arrive together would all look uncached and scatter. The router therefore *predicts*:
when it sends a request somewhere, that worker is recorded as holding the prompt's blocks
until the worker's own STORED event confirms them, or until ``expires_at`` (a request that
never got there), whichever comes first.

This is the reference implementation: cluster/index/compact_index.py gives the same answers at
fleet scale (tests/cluster/test_prefix_index_compact.py compares them event by event).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.block_hash import ROOT_HASH, BlockHash
from kvstore.keys import Tier
from kvstore.kv_events import EventKind, KVEvent

ROOT_ID = 0  # ROOT_HASH's block id: decoded events carry ids (kvstore/kv_events.py)


@dataclass(eq=False)
class PrefixNode:
    block_hash: BlockHash
    parent: PrefixNode | None
    children: dict[BlockHash, PrefixNode] = field(default_factory=dict)
    holders: dict[str, Tier] = field(default_factory=dict)


class PrefixIndex:
    def __init__(self) -> None:
        self.root = PrefixNode(ROOT_HASH, None)
        self.nodes: dict[BlockHash, PrefixNode] = {ROOT_HASH: self.root}
        self.held_by: dict[str, set[BlockHash]] = {}
        self.predicted: dict[tuple[str, BlockHash], float] = {}  # (worker, block) -> expiry
        self._expiries: deque[tuple[float, str, BlockHash]] = deque()

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def apply(self, event: KVEvent) -> None:
        if event.kind is EventKind.STORED:
            for h, parent in zip(event.hashes, event.parents):
                self.predicted.pop((event.worker_id, h), None)  # confirmed
                self.add(event.worker_id, h, parent, event.tier)
        elif event.kind is EventKind.EVICTED:
            for h in event.hashes:
                self.remove(event.worker_id, h)
        else:
            for h in list(self.held_by.get(event.worker_id, ())):
                self.remove(event.worker_id, h)

    def add(self, worker_id: str, block_hash: BlockHash, parent_hash: BlockHash, tier: Tier = Tier.GPU) -> None:
        node = self.nodes.get(block_hash)
        if node is None:
            parent = self.nodes.get(parent_hash) or (self.root if parent_hash == ROOT_ID else None)
            if parent is None:  # the parent's event was lost: hang the block under a placeholder
                parent = self.nodes[parent_hash] = PrefixNode(parent_hash, self.root)
                self.root.children[parent_hash] = parent
            node = self.nodes[block_hash] = PrefixNode(block_hash, parent)
            parent.children[block_hash] = node
        node.holders[worker_id] = tier
        self.held_by.setdefault(worker_id, set()).add(block_hash)

    def predict(self, worker_id: str, hashes: Sequence[BlockHash], expires_at: float) -> None:
        """Record that ``worker_id`` will hold ``hashes`` (a prompt's chained block hashes, in
        order) once its prefill stores them; blocks it already holds are left as they are."""
        parent = ROOT_HASH
        for h in hashes:
            node = self.nodes.get(h)
            if node is None or worker_id not in node.holders or (worker_id, h) in self.predicted:
                self.add(worker_id, h, parent)
                self.predicted[(worker_id, h)] = expires_at
                self._expiries.append((expires_at, worker_id, h))
            parent = h

    def expire(self, now: float) -> None:
        """Drop predictions older than their expiry that no STORED event confirmed."""
        while self._expiries and self._expiries[0][0] <= now:
            when, worker_id, h = self._expiries.popleft()
            if self.predicted.get((worker_id, h)) == when:
                del self.predicted[(worker_id, h)]
                self.remove(worker_id, h)

    def remove(self, worker_id: str, block_hash: BlockHash) -> None:
        self.predicted.pop((worker_id, block_hash), None)
        node = self.nodes.get(block_hash)
        if node is None or node.holders.pop(worker_id, None) is None:
            return
        self.held_by[worker_id].discard(block_hash)
        while node is not self.root and not node.holders and not node.children:
            del self.nodes[node.block_hash]
            del node.parent.children[node.block_hash]
            node = node.parent

    def matched_blocks(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each worker, how many leading blocks of ``hashes`` it holds (any tier)."""
        counts: dict[str, int] = {}
        alive: set[str] | None = None
        for depth, h in enumerate(hashes):
            node = self.nodes.get(h)
            holders = set(node.holders) if node is not None else set()
            alive = holders if alive is None else alive & holders
            if not alive:
                break
            for worker in alive:
                counts[worker] = depth + 1
        return counts
