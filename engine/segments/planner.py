"""Segment reuse inside one engine: the scheduler's hooks, filling a request's blocks from the
store, and keeping what requests compute.

A request with segments is prefilled in contiguous chunks, as any other, with two differences:

* a chunk stops where a reusable segment's recomputed head ends (its *probe*, the first
  ``recompute_ratio`` of its tokens, computed with full attention over the request's context);
* at that position the rest of the segment is *filled*: its KV, taken from the store, moved to
  the request's positions and corrected (engine/segments/anchors.py), is written into the
  request's blocks and its tokens count as computed (positions advance; no forward runs them).

The scheduler asks ``next_fill`` (what to fill at a request's position, if anything) and
``clip`` (where its chunk must stop), and calls ``apply`` once the blocks are allocated; after
each launched step the engine calls ``after_compute``, which stores the KV of every segment the
request computed exactly (no approximate fill before it) as an anchor. Decisions depend only on
the request's position, so a preempted request that starts over plans again.

Filled KV that is not bit-exact (a different prefix) marks the request: its blocks from there on
are never offered to the prefix cache (``Request.exact_tokens``), so no other request ever
takes an approximation for a prefix hit. A segment found after the very same prefix is copied
unchanged: exact, and its blocks are offered as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model_config import ModelConfig
from engine.request import Request
from engine.segments.anchors import estimate
from engine.segments.plan import PlannedSpan, SegmentPlan
from engine.segments.rerotate import Rerotator
from engine.segments.spec import SegmentReuse, SegmentStats, context_hash, segment_hash
from engine.segments.store import Anchor, SegmentStore


@dataclass(frozen=True)
class FillPart:
    """KV to write for a request's tokens [start, end) of segment ``span`` (``kv`` [L, 2, end - start, H, D])."""

    span: int
    start: int
    end: int
    kv: torch.Tensor
    exact: bool


@dataclass(frozen=True)
class Fill:
    """What to fill at a request's position: one segment's reused tokens, or several when each
    starts where the last ends (adjacent segments without recomputed heads: one chunk, no steps
    between them)."""

    parts: tuple[FillPart, ...]

    @property
    def start(self) -> int:
        return self.parts[0].start

    @property
    def end(self) -> int:
        return self.parts[-1].end

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


class PagedKV:
    """Reads and writes a request's token positions in the paged cache [L, 2, blocks, bs, H, D]."""

    def __init__(self, kv_cache: torch.Tensor):
        self.block_size = kv_cache.shape[3]
        self.flat = kv_cache.view(kv_cache.shape[0], 2, -1, *kv_cache.shape[4:])

    def slots(self, block_ids: list[int], start: int, end: int) -> torch.Tensor:
        bs = self.block_size
        slots = [block_ids[p // bs] * bs + p % bs for p in range(start, end)]
        return torch.tensor(slots, dtype=torch.long, device=self.flat.device)

    def read(self, block_ids: list[int], start: int, end: int) -> torch.Tensor:
        return self.flat[:, :, self.slots(block_ids, start, end)]

    def write(self, block_ids: list[int], start: int, kv: torch.Tensor) -> None:
        self.flat[:, :, self.slots(block_ids, start, start + kv.shape[2])] = kv.to(self.flat.dtype)


class SegmentPlanner:
    def __init__(self, store: SegmentStore, kv: PagedKV, model_config: ModelConfig, temperature: float = 0.1):
        self.store, self.kv = store, kv
        self.rerotate = Rerotator(model_config, kv.flat.device)
        self.temperature = temperature
        self._counts = dict.fromkeys(("requests", "prompt_tokens", "lookups", "hits", "exact_hits",
                                      "reused_tokens", "anchors_stored"), 0)

    def plan(self, request: Request, reuse: SegmentReuse) -> SegmentPlan:
        """The request's plan (call once it is validated); counts it for the reuse rate."""
        prompt = request.prompt_token_ids
        spans = []
        for start, end in reuse.usable_spans():
            probe_end = start + reuse.recomputed(end - start)
            spans.append(PlannedSpan(start, end, segment_hash(prompt[start:end], request.cache_salt),
                                     probe_end, min(end, len(prompt) - 1)))  # the last token is computed
        self._counts["requests"] += 1
        self._counts["prompt_tokens"] += len(prompt)
        return SegmentPlan(reuse, spans)

    # -- the scheduler's hooks ------------------------------------------------------------
    def clip(self, request: Request, position: int, n: int) -> int:
        """Tokens of a chunk starting at ``position``: at most up to the next segment's probe end
        where a fill may follow."""
        plan = request.segments
        for i, span in enumerate(plan.spans):
            if position < span.probe_end and span.fillable and i not in plan.computed and self._usable(span, plan):
                return max(1, min(n, span.probe_end - position))
        return n

    def next_fill(self, request: Request) -> Fill | None:
        """What to fill at the request's position (its next uncomputed token), if anything."""
        plan, pos = request.segments, request.num_computed_tokens
        if pos < plan.position:
            plan.restart()  # preempted: it starts over
        plan.position = pos
        parts = []
        for i, span in enumerate(plan.spans):
            if span.probe_end <= pos < span.fill_end and i not in plan.computed and i not in plan.filled:
                part = self._decide(request, i, span, pos)
                if part is None:
                    break
                parts.append(part)
                pos = part.end
        return Fill(tuple(parts)) if parts else None

    def apply(self, request: Request, fill: Fill) -> None:
        """Write a fill into the request's (allocated) blocks; its tokens count as computed."""
        plan = request.segments
        for part in fill.parts:
            self.kv.write(request.block_ids, part.start, part.kv)
            plan.filled[part.span] = part.end - part.start
            if not part.exact and (request.exact_tokens is None or part.start < request.exact_tokens):
                request.exact_tokens = part.start
            self._counts["hits"] += 1
            self._counts["exact_hits"] += part.exact
            self._counts["reused_tokens"] += part.end - part.start
        request.num_computed_tokens = plan.position = fill.end
        request.num_reused_tokens = plan.num_reused_tokens

    def after_compute(self, request: Request) -> None:
        """Store, as anchors, the segments this request has now computed exactly."""
        plan, done = request.segments, request.num_computed_tokens
        for i, span in enumerate(plan.spans):
            if i in plan.captured or i in plan.filled or span.end > done:
                continue
            plan.captured.add(i)
            if request.exact_tokens is not None and request.exact_tokens < span.end:
                continue
            kv = self.kv.read(request.block_ids, span.start, span.end)
            anchor = Anchor(span.start, self._context(request, span), kv)
            self._counts["anchors_stored"] += self.store.add(span.key, anchor)

    def stats(self) -> SegmentStats:
        return SegmentStats(**self._counts, stored_segments=len(self.store), stored_bytes=self.store.nbytes)

    # -- internals ------------------------------------------------------------------------
    def _usable(self, span: PlannedSpan, plan: SegmentPlan) -> bool:
        entry = self.store.peek(span.key)
        return entry is not None and len(entry.anchors) >= plan.reuse.min_anchors

    def _decide(self, request: Request, i: int, span: PlannedSpan, pos: int) -> FillPart | None:
        plan = request.segments
        self._counts["lookups"] += 1
        entry = self.store.get(span.key)
        if entry is None or len(entry.anchors) < plan.reuse.min_anchors:
            plan.computed.add(i)
            return None
        same = entry.with_context(self._context(request, span))
        if same is not None:
            kv = same.kv[:, :, pos - span.start:span.fill_end - span.start]
            return FillPart(i, pos, span.fill_end, kv, exact=True)
        anchors = entry.anchors if plan.reuse.anchor_offsets else entry.anchors[:1]
        fresh = None
        if len(anchors) > 1 and pos > span.start:
            fresh = self.kv.read(request.block_ids, span.start, pos)
        kv = estimate(anchors, span.start, pos, span.fill_end, self.rerotate, fresh, self.temperature)
        return FillPart(i, pos, span.fill_end, kv, exact=False)

    def _context(self, request: Request, span: PlannedSpan) -> bytes:
        if span.context is None:
            span.context = context_hash(request.prompt_token_ids[:span.start], request.cache_salt)
        return span.context
