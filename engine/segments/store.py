"""The engine's segment store: each segment's KV as requests computed it, under their prefixes.

An entry holds one or more *anchors*: the segment's post-RoPE keys and values for every layer,
exactly as a full prefill computed them after some prefix (its start position and a hash of
that prefix kept beside it). The first is the base that plain reuse re-rotates; the others are
the deviations KVCOMM interpolates (docs/segment_reuse.md). Whole entries are evicted least
recently used first when the byte budget is exceeded; what was stored or evicted is kept as
events for the cluster's segment index.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from engine.segments.spec import SegmentKey


@dataclass(eq=False)
class Anchor:
    """One observation of a segment: kv [layers, 2, tokens, kv_heads, head_dim] in the cache's
    dtype, keys rotated for positions start + i, computed after a prefix hashed as ``context``."""

    start: int
    context: bytes
    kv: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@dataclass(eq=False)
class SegmentEntry:
    key: SegmentKey
    length: int
    anchors: list[Anchor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.anchors)

    def with_context(self, context: bytes) -> Anchor | None:
        return next((a for a in self.anchors if a.context == context), None)


@dataclass
class SegmentEvents:
    """Segments that became reusable here (with their anchor count) or stopped being so."""

    stored: list[tuple[SegmentKey, int]] = field(default_factory=list)
    evicted: list[SegmentKey] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stored or self.evicted)


class SegmentStore:
    def __init__(self, max_bytes: int, max_anchors: int = 8):
        if max_anchors < 1:
            raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
        self.max_bytes, self.max_anchors = max_bytes, max_anchors
        self.entries: OrderedDict[SegmentKey, SegmentEntry] = OrderedDict()
        self.nbytes = 0
        self.events = SegmentEvents()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: SegmentKey) -> SegmentEntry | None:
        """The entry (marked recently used), if stored."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def peek(self, key: SegmentKey) -> SegmentEntry | None:
        return self.entries.get(key)

    def add(self, key: SegmentKey, anchor: Anchor) -> bool:
        """Keep one more observation of a segment (a new entry, or an anchor of a context not
        yet held, while under ``max_anchors``); False if it was not kept."""
        entry = self.entries.get(key)
        if entry is not None and (len(entry.anchors) >= self.max_anchors
                                  or entry.with_context(anchor.context) is not None):
            return False
        if anchor.nbytes > self.max_bytes:
            return False
        self._evict_for(anchor.nbytes, keep=key)
        if self.nbytes + anchor.nbytes > self.max_bytes:
            return False
        if entry is None:
            entry = self.entries[key] = SegmentEntry(key, anchor.kv.shape[2])
        entry.anchors.append(anchor)
        self.entries.move_to_end(key)
        self.nbytes += anchor.nbytes
        self.events.stored.append((key, len(entry.anchors)))
        return True

    def clear(self) -> None:
        for key in list(self.entries):
            self._drop(key)

    def drain_events(self) -> SegmentEvents:
        events, self.events = self.events, SegmentEvents()
        return events

    def _evict_for(self, nbytes: int, keep: SegmentKey) -> None:
        for key in list(self.entries):
            if self.nbytes + nbytes <= self.max_bytes:
                return
            if key != keep:
                self._drop(key)

    def _drop(self, key: SegmentKey) -> None:
        entry = self.entries.pop(key)
        self.nbytes -= entry.nbytes
        self.events.evicted.append(key)
