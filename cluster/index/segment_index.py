"""Which replicas hold which segments: the router's side of segment reuse (docs/segment_reuse.md).

Workers publish the segments their stores keep (with anchor counts) and drop on the KV event
stream (kvstore/kv_events.py); this index follows them, in stream order with the block events
(a worker's CLEARED forgets its segments too). A segment is its 64-bit id: the first 8 bytes
of its salted, position-free hash (engine/segments/spec.py), so tenants' segments never meet.
The router also predicts that a replica it sends a request to will keep the request's segments
(it computes them), until ``expires``, as the prefix index predicts blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.segments.spec import SegmentReuse, segment_hash
from kvstore.kv_events import SEGMENT_STORED, EventBatch, EventKind, block_ids

SegmentId = int


@dataclass(frozen=True)
class RequestSegments:
    """A request's reusable segments: per segment its id and how many of its tokens a holder
    would fill instead of computing (its length less its recomputed head), and where it starts."""

    ids: tuple[SegmentId, ...]
    reusable: tuple[int, ...]
    starts: tuple[int, ...]
    min_anchors: int = 1

    @classmethod
    def of(cls, prompt: Sequence[int], salt: str | None, reuse: SegmentReuse) -> RequestSegments:
        spans = reuse.usable_spans()
        keys = [segment_hash(prompt[s:e], (salt or "").encode()) for s, e in spans]
        # the prompt's last token is always computed, so a segment that ends it reuses one less
        reusable = [min(e, len(prompt) - 1) - s - reuse.recomputed(e - s) for s, e in spans]
        return cls(tuple(block_ids(keys).tolist()), tuple(max(0, r) for r in reusable),
                   tuple(s for s, _ in spans), reuse.min_anchors)


class SegmentIndex:
    def __init__(self) -> None:
        self.held: dict[SegmentId, dict[str, int]] = {}        # segment -> {worker: anchors}
        self.predicted: dict[SegmentId, dict[str, float]] = {}   # segment -> {worker: expiry}
        self.applied = 0  # segment events applied

    def __len__(self) -> int:
        return len(self.held)

    def apply(self, batch: EventBatch) -> None:
        """A batch's segment events and its CLEARED events, in the stream's order."""
        cleared = [(i, w) for i, (w, kind, _) in enumerate(batch.events) if kind is EventKind.CLEARED]
        for event in batch.segments:
            while cleared and cleared[0][0] < event.at:
                self.clear(cleared.pop(0)[1])
            self.applied += 1
            if event.kind == SEGMENT_STORED:
                for sid, anchors in zip(event.ids.tolist(), event.anchors.tolist()):
                    self.held.setdefault(sid, {})[event.worker_id] = anchors
                    _pop(self.predicted, sid, event.worker_id)
            else:
                for sid in event.ids.tolist():
                    _pop(self.held, sid, event.worker_id)
        for _, worker in cleared:
            self.clear(worker)

    def predict(self, worker_id: str, request: RequestSegments, expires: float) -> None:
        for sid in request.ids:
            if worker_id not in self.held.get(sid, {}):
                self.predicted.setdefault(sid, {})[worker_id] = expires

    def reusable_tokens(self, request: RequestSegments, prefix_tokens: dict[str, int], now: float) -> dict[str, int]:
        """Per worker, the request's tokens it would fill from its segment store: segments it
        holds (with enough anchors, or predicted) that start past its cached prefix."""
        out: dict[str, int] = {}
        for sid, tokens, start in zip(request.ids, request.reusable, request.starts):
            holders = {w for w, n in self.held.get(sid, {}).items() if n >= request.min_anchors}
            holders |= {w for w, t in self.predicted.get(sid, {}).items() if t > now}
            for w in holders:
                if start >= prefix_tokens.get(w, 0):
                    out[w] = out.get(w, 0) + tokens
        return out

    def expire(self, now: float) -> None:
        for sid, workers in list(self.predicted.items()):
            for w in [w for w, t in workers.items() if t <= now]:
                _pop(self.predicted, sid, w)

    def clear(self, worker_id: str) -> None:
        for table in (self.held, self.predicted):
            for sid in [s for s, workers in table.items() if worker_id in workers]:
                _pop(table, sid, worker_id)


def _pop(table: dict[SegmentId, dict], sid: SegmentId, worker_id: str) -> None:
    """Forget one (segment, worker) pair, and the segment once no worker is left."""
    workers = table.get(sid)
    if workers is not None:
        workers.pop(worker_id, None)
        if not workers:
            del table[sid]
