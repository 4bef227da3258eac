"""Continuous batching: which requests run this step and how many tokens each computes.

Every step has a token budget. Running requests go first (one token for those decoding,
the next chunk for those still prefilling), then waiting requests are admitted while the
budget, the sequence limit and free blocks allow. When a running request cannot get a
block, the most recently admitted request is preempted: its blocks are freed and it
goes back to the front of the queue to recompute its KV later.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus

if TYPE_CHECKING:
    from engine.segments.planner import Fill, SegmentPlanner


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the known tokens, so a token is sampled."""
        r = self.request
        return r.num_computed_tokens + self.num_new_tokens == r.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, segments: SegmentPlanner | None = None):
        """``segments``: fills reused segments' KV for requests that ask (engine/segments/)."""
        self.config = config
        self.kv = kv
        self.segments = segments
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.stop_pending:  # ends with the token its last step sampled: nothing left to run
                i += 1
                continue
            fill, n = self._next_chunk(req, budget)
            while not self.kv.allocate_slots(req, n + (fill.num_tokens if fill else 0)):
                victim = self._pop_victim()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    return budget
            if fill is not None:
                cast("SegmentPlanner", self.segments).apply(req, fill)  # a fill comes from the planner
            out.scheduled.append(ScheduledRequest(req, n))
            budget -= n
            i += 1
        return budget

    def _next_waiting(self, cached: dict[str, int]) -> Request:
        """FCFS, except that with prefix caching the requests whose prefix is cached (or whose
        KV is already here) go first (BatchLLM): they cost the least to start, and they
        decode in the same batch as the requests they share blocks with. A request that has
        waited longer than ``max_admission_delay_s`` is not passed over. ``cached`` keeps
        each candidate's cached-block count for one scheduling pass (admitting a request
        does not change what is cached; only the ranking's cost would grow with the window)."""
        head = self.waiting[0]
        if not self.kv.pool.enable_caching or time.monotonic() - head.arrival_time > \
                self.config.max_admission_delay_s:
            return head

        def rank(entry: tuple[int, Request]) -> tuple[bool, int, int]:
            i, req = entry
            blocks = cached.get(req.request_id)
            if blocks is None:
                blocks = cached[req.request_id] = self.kv.cached_prefix_blocks(req)
            return bool(req.block_ids), blocks, -i
        return max(enumerate(itertools.islice(self.waiting, self.config.admission_window)), key=rank)[1]

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        cached: dict[str, int] = {}
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self._next_waiting(cached)
            looked_up = not req.block_ids
            if looked_up:
                req.num_computed_tokens = self.kv.match_prefix(req)
                req.num_cached_tokens = max(req.num_cached_tokens, req.num_computed_tokens)
            fill, n = self._next_chunk(req, budget)
            if not self.kv.allocate_slots(req, n + (fill.num_tokens if fill else 0)):
                self.kv.free(req)  # a request that cannot start holds no blocks, cached ones included
                req.num_computed_tokens = 0
                break
            if fill is not None:
                cast("SegmentPlanner", self.segments).apply(req, fill)  # a fill comes from the planner
            if looked_up:
                self.kv.count_lookup(req.num_tokens, req.num_computed_tokens)
            self.waiting.remove(req)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, n))
            budget -= n

    def _next_chunk(self, req: Request, budget: int) -> tuple[Fill | None, int]:
        """(a reused segment's KV to fill at the request's position first, or None; the tokens
        to compute after it). A request with segments stops its chunk where a fill may follow."""
        if req.segments is None or self.segments is None:
            return None, min(req.num_tokens - req.num_computed_tokens, budget)
        fill = self.segments.next_fill(req)
        start = fill.end if fill is not None else req.num_computed_tokens
        return fill, self.segments.clip(req, start, min(req.num_tokens - start, budget))

    def _pop_victim(self) -> Request:
        """The most recently admitted running request that may still run (one whose last token
        is pending ends anyway, and may be holding its KV for a handoff)."""
        for j in range(len(self.running) - 1, -1, -1):
            if not self.running[j].stop_pending:
                return self.running.pop(j)
        raise AssertionError("a request being scheduled is always a candidate")

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)

    def preempt_all(self) -> list[Request]:
        """Every request gives its blocks back and recomputes its KV later (the cache's contents
        were lost); running ones go back to the queue's front in their order."""
        victims, self.running = self.running, []
        for req in reversed(victims):
            self._preempt(req)
        for req in self.waiting:
            if req.block_ids:  # KV received for it (a handoff), never computed here
                self.kv.free(req)
                req.num_computed_tokens = 0
        return victims

    def detach(self, req: Request) -> None:
        """Drop a finished request from the queues but leave its blocks allocated."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED

    def finish(self, req: Request) -> None:
        """Release a request's blocks and drop it from whichever queue holds it."""
        self.detach(req)
        self.kv.free(req)
