"""One simulated engine replica: a prefill queue run in token-budgeted, chunked iterations, a
decode batch, or both (colocated: prefill chunks ride along with decode steps, Sarathi-style).

KV memory, on demand (``on_demand``, the default; as real engines, which do not know output
lengths): a request starting its prefill reserves its prompt (a decode replica: its prompt and
first token); once it decodes its KV is the batch's context, which grows a token per step. When
the next step would not fit, the most recently joined sequence is preempted (its KV freed; it
goes back to the queue, behind prompts already started, and recomputes its prompt and the
tokens it made, the last prefill chunk sampling its next token), as our engine's scheduler does.
Reserved (``on_demand`` off): prompt + output is reserved at the start, as if the output length
were known, and nothing is ever preempted. A prefill replica holds a prompt until its KV has left.

With a paged prefix cache (Design.paged_kv, colocated only) the replica keeps its KV in blocks
shared with the cache: simulator/paged_blocks.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from heapq import heappush
from typing import Protocol

from simulator.decode_batch import DecodeBatch
from simulator.operators import Work
from simulator.overlap import delivery_hold, host_floor, launch_shift
from simulator.paged_blocks import PagedBlocks
from simulator.prefix_cache import PagedPrefixCache, PrefixCache
from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.shared_prefix import SharedPrefixes


class Host(Protocol):
    """What a replica asks of the simulation it runs in (simulation.Simulation)."""

    heap: list            # the event heap: (time, seq, handler, arg)
    seq: Iterator[int]    # the events' tie-break counter
    segments: list[tuple[int, int, float, float]]
    extra_gaps: list[float]
    preemptions: int

    def step_noise(self, seconds: float) -> float: ...

    def on_prefilled(self, req: Request, t: float) -> None: ...

    def start_transfer(self, req: Request, t: float) -> None: ...

    def on_finished(self, req: Request) -> None: ...


class Replica(PagedBlocks):
    __slots__ = ("sim", "pool", "role", "cost", "kv_capacity", "max_seqs", "max_tokens", "cache", "block_tokens",
                 "queue", "queued_tokens", "kv_used", "pending", "pending_tokens", "ready", "batch", "iterating",
                 "current", "version", "busy_s", "nic_free", "paged", "on_demand", "request_busy_s", "free_at",
                 "heap", "seq", "shift", "mixed_end", "mixed_gap", "launches", "fresh", "on_iteration_end", "on_wake",
                 "evicted_k")

    def __init__(self, sim: Host, pool: str, role: str, cost: IterationCost, kv_capacity: int,
                 max_seqs: int, max_tokens: int, cache: PrefixCache | None, block_tokens: int,
                 share_prefixes: bool = False, on_demand: bool = False, request_busy_s: float = 0.0) -> None:
        self.sim, self.pool, self.role, self.cost = sim, pool, role, cost
        self.kv_capacity, self.max_seqs, self.max_tokens = kv_capacity, max_seqs, max_tokens
        self.cache, self.block_tokens = cache, block_tokens
        self.queue: deque[Request] = deque()    # prefill: waiting or part-way (started ones first)
        self.queued_tokens = 0                   # prompt tokens still to compute in the queue
        self.kv_used = 0                         # reserved outside the decode batch (all of it when not on_demand)
        self.pending: deque[Request] = deque()  # decode: waiting for a KV reservation
        self.pending_tokens = 0
        self.ready: deque[Request] = deque()    # decode: KV arrived, waiting for a batch slot
        shared = SharedPrefixes(cost, block_tokens) if share_prefixes else None
        self.paged = isinstance(cache, PagedPrefixCache)
        self.on_demand = on_demand and role != "prefill"
        self.batch = None if role == "prefill" else DecodeBatch(
            cost, sim.segments, self._finished_running if self.paged and self.on_demand else self._finished,
            shared, self if self.on_demand else None, self._preempt)
        self.iterating = False
        self.current: list[tuple[Request, int]] = []
        self.version = 0                         # bumps cancel scheduled decode wake-ups
        self.busy_s = 0.0
        self.nic_free = 0.0                      # when this replica's NIC is free for the next KV transfer
        self.request_busy_s = request_busy_s     # serving work per request on this engine (serving.py)
        self.free_at = 0.0                       # a prefill engine busy with that work until then
        self.heap, self.seq = sim.heap, sim.seq  # the simulation's events (hot: pushed directly)
        self.on_iteration_end, self.on_wake = self._iteration_end, self._wake  # their handlers, bound once
        self.shift: tuple[int, float, float] | None = None  # a mixed iteration's launch shift (overlap.py)
        self.mixed_end, self.mixed_gap = -1.0, 0.0          # the last mixed iteration's end and token gap
        self.launches = getattr(cost, "launches", False)  # without launch times every launch term is 0 (overlap.py)
        self.fresh: list[Request] = []  # first tokens read back at the last boundary (overlap.delivery_hold)
        self.evicted_k = -1  # paged on demand: the decode step the cache last gave way to a run's KV at

    # ---- memory
    def in_use(self) -> int:
        """KV tokens held now: reservations, plus the decode batch's context when on demand (paged:
        and the cached blocks requests use, once each; not idle cached blocks)."""
        return self.kv_used + self.batch.context if self.on_demand else self.kv_used

    def _start_need(self, req: Request) -> int:
        """KV a prefill (or a recompute) reserves when it starts here."""
        if self.role == "prefill":
            return req.prompt
        return req.prompt + req.generated if self.on_demand else req.prompt + req.output

    def _arrival_need(self, req: Request) -> int:
        """KV a decode replica reserves for a prefilled request's handoff (and its first decode token)."""
        return req.prompt + 1 if self.on_demand else req.prompt + req.output

    def _fits(self, need: int) -> bool:
        return self.in_use() + need <= self.kv_capacity

    def _preempt(self, t: float) -> None:
        """The batch's next step does not fit: its most recently joined sequence recomputes later."""
        req = self.batch.preempt_last()
        if self.paged:
            self._evict_with(req)
            self._release_blocks(req)
        req.preemptions += 1
        self.sim.preemptions += 1
        req.prefill_start, req.cached, req.computed = -1.0, 0, 0
        req.remaining = req.prompt + req.generated
        self.queued_tokens += req.remaining
        started = 0
        for queued in self.queue:  # behind the prompts already started, ahead of the waiting ones
            if queued.prefill_start < 0.0:
                break
            started += 1
        self.queue.insert(started, req)

    def _kick(self) -> None:
        """After the batch moved: run queued prompts (or recomputes), else wait for its next change."""
        if self.queue and not self.iterating:
            self._start_iteration(self.batch.t)
        else:
            self._schedule_wake()

    # ---- prefill side
    def cached_tokens(self, req: Request) -> int:
        if self.cache is None or not req.hash_ids:
            return 0
        return min(self.cache.peek(req.hash_ids) * self.block_tokens, req.prompt - 1)

    def submit(self, req: Request, t: float) -> None:
        """A new request for this replica's prefill queue."""
        req.prefill_replica = self
        self.queue.append(req)
        self.queued_tokens += req.prompt
        if self.request_busy_s and self.batch is not None:  # a colocated engine admitting it
            self._add_busy(t)
        if not self.iterating:  # from the batch's next boundary
            if self.batch is not None:
                self.batch.advance_to(t)
                t = self.batch.t
            self._start_iteration(t)

    def _add_busy(self, t: float) -> None:
        """Serving work for one request on this engine, between two of its steps (serving.py)."""
        batch = self.batch
        if batch is None:
            self.free_at = max(self.free_at, t) + self.request_busy_s
            return
        if not self.iterating:
            batch.advance_to(t)
        batch.stall += self.request_busy_s

    def _start_iteration(self, t: float) -> None:
        batch = self.batch
        if self.on_demand and batch.batch and self.kv_capacity - self.kv_used - batch.context < 0:
            batch.make_room()  # the next step would not fit (fitting_steps() == 0, inlined)
        if t < self.free_at:
            t = self.free_at
        running = batch.batch if batch is not None else 0
        budget, seqs = self.max_tokens - running, self.max_seqs - running
        chunks = []  # (request, prompt tokens this iteration), and the iteration's Work summed
        tokens = logits = attended = kv_read = 0
        for req in self.queue:
            if budget <= 0 or seqs <= 0:
                break
            if req.prefill_start < 0.0 and not self._start(req, t):
                break
            n = req.remaining
            if n > budget:
                n = budget
            chunks.append((req, n))
            budget -= n
            seqs -= 1
            tokens += n
            logits += n == req.remaining
            attended += n * req.computed + n * (n + 1) // 2
            kv_read += req.computed + n
        if not chunks:
            self._schedule_wake()
            return
        work = Work(tokens, logits, attended, kv_read)
        floor = host_floor(self.cost, tokens + running) if self.launches else 0.0  # eager launches (overlap.py)
        if batch is not None and running:
            seconds = self.cost.mixed_seconds(work, running, batch.context)
        else:
            seconds = self.cost.seconds(work)
        if floor > seconds:  # max(seconds, floor): no min/max calls on the hot paths
            seconds = floor
        if batch is None:
            seconds = self.sim.step_noise(seconds)
        else:
            if running and self.launches:
                self._launch_shift(tokens + running, seconds, t)
            seconds += batch.stall  # batch.take_stall(), inlined
            batch.stall = 0.0
            if self.fresh:
                self._hold_first_tokens(t, tokens + running)
            if batch.t < t:
                batch.t = t
        self.iterating, self.current = True, chunks
        self.version += 1
        heappush(self.heap, (t + seconds, next(self.seq), self.on_iteration_end, seconds))

    def _hold_first_tokens(self, t: float, tokens: int) -> None:
        """First tokens read back at ``t``, as this iteration starts, reach the client after its launch."""
        hold = delivery_hold(self.cost, tokens)
        for req in self.fresh:
            if req.ttft_at == t:
                req.ttft_at = t + hold
        self.fresh.clear()

    def _launch_shift(self, tokens: int, seconds: float, t: float) -> None:
        """How much of this mixed iteration's time shows in the previous step's token gap (overlap.py)."""
        batch = self.batch
        if batch is None:
            return
        b = batch.batch
        if self.mixed_end == t:
            previous = self.mixed_gap
        else:
            (_, a, slope), *_ = self.cost.decode_pieces(b)  # the decode step before, at its context
            previous = a + slope * (batch.context - b)
        shift = launch_shift(self.cost, tokens, seconds, previous)
        self.shift = (b, previous, shift) if shift > 0 else None

    def _split_gap(self, t: float, seconds: float) -> None:
        """The mixed iteration just stepped: move its launch shift to the previous step's tokens."""
        if self.shift is None:
            return
        b, previous, shift = self.shift
        self.shift = None
        self.batch.shift_gap(b, previous, shift, seconds)
        self.mixed_end, self.mixed_gap = t, seconds - shift

    def _start(self, req: Request, t: float) -> bool:
        if self.paged:
            return self._start_paged(req, t)
        need = self._start_need(req)
        if (self.kv_used + self.batch.context if self.on_demand else self.kv_used) + need > self.kv_capacity:
            return False  # not self._fits(need) (hot: inlined)
        self.kv_used += need
        req.reserved = need
        req.prefill_start = t
        if self.cache is not None and req.hash_ids:
            req.cached = min(self.cache.lookup(req.hash_ids) * self.block_tokens, req.prompt - 1)
            req.computed, req.remaining = req.cached, req.remaining - req.cached
            self.queued_tokens -= req.cached
        return True

    def _finished_running(self, req: Request, t: float) -> None:
        """A running sequence's last token (paged on demand)."""
        self._evict_with(req)
        self._finished(req, t)

    def _iteration_end(self, t: float, seconds: float) -> None:
        self.iterating = False
        if self.fresh:
            self.fresh.clear()
        self.busy_s += seconds
        if self.batch is not None:
            self.batch.step(seconds)
            if self.shift is not None:
                self._split_gap(t, seconds)
        for req, n in self.current:
            req.remaining -= n
            req.computed += n
            self.queued_tokens -= n
        queue = self.queue
        done = 0
        while queue and queue[0].remaining == 0:
            self._prefilled(queue.popleft(), t)
            done += 1
        if done and self.batch is None and self.request_busy_s:  # handoff work on the prefill engine
            self.free_at = t + done * self.request_busy_s
            self.busy_s += done * self.request_busy_s
        if self.role == "decode":
            self._grant_pending(t)
            self._fill_batch()
        if queue:
            self._start_iteration(t)
        else:
            self._schedule_wake()

    def _prefilled(self, req: Request, t: float) -> None:
        """Its last prompt chunk ran: a token is sampled (its first, or a recompute's next)."""
        resumed = req.ttft_at >= 0.0
        if resumed:
            self.sim.extra_gaps.append(t - req.last_token_at)
        else:
            req.ttft_at = t
            if self.launches and self.batch is not None:
                self.fresh.append(req)
        req.generated += 1
        req.last_token_at = t
        if self.paged:
            self._cache_prompt(req)
        elif self.cache is not None and req.hash_ids:
            self.cache.insert(req.hash_ids)
        if self.role == "prefill":
            self.sim.on_prefilled(req, t)
        elif req.generated >= req.output:
            self._finished(req, t)
        else:
            self._join(req, resumed)

    def _join(self, req: Request, resumed: bool = False) -> None:
        if self.on_demand:  # its KV is the batch's context from now on
            self.kv_used -= req.reserved
            req.reserved = 0
        self.batch.join(req, resumed)

    def release_prefill(self, req: Request, t: float) -> None:
        """The request's KV has left this prefill replica."""
        self.kv_used -= req.prompt
        if self.queue and not self.iterating:
            self._start_iteration(t)

    # ---- decode side
    def kv_load(self) -> int:
        """KV held and asked for: what the router balances decode replicas on."""
        return self.kv_used + self.pending_tokens + (self.batch.context if self.on_demand else 0)

    def reserve(self, req: Request, t: float) -> bool:
        """Reserve KV for a prefilled request, or queue it until memory frees (then the simulation
        is told to start its transfer). On demand, against what the batch holds at ``t``."""
        req.decode_replica = self
        need = self._arrival_need(req)
        moved = False
        if self.on_demand and not self.pending and not self.queue and not self.iterating \
                and not self._fits_until_next_change(need):
            self.batch.advance_to(t)  # what the batch holds now decides
            moved = True
        granted = not self.pending and not (self.on_demand and self.queue) and self._fits(need)
        if granted:
            self.kv_used += need
            req.reserved = need
        else:
            self.pending.append(req)
            self.pending_tokens += need
        if moved:
            self._kick()
        return granted

    def _fits_until_next_change(self, need: int) -> bool:
        """Whether ``need`` more tokens fit beside the batch's largest context before its next
        change (so the batch need not be advanced, nor its wake-up moved, to grant them)."""
        batch = self.batch
        if not batch.batch:
            return self._fits(need)
        steps, fit = batch.finishes[0][0] - batch.k, batch.fitting_steps()
        if fit < steps:
            steps = fit
        return self.kv_used + need + batch.context + batch.batch * (steps - 1) <= self.kv_capacity

    def _grant_pending(self, t: float) -> None:
        """Reservations waiting for memory, in order (on demand: once no preempted request waits)."""
        while self.pending and not (self.on_demand and self.queue):
            need = self._arrival_need(self.pending[0])
            if not self._fits(need):
                return
            nxt = self.pending.popleft()
            self.pending_tokens -= need
            self.kv_used += need
            nxt.reserved = need
            self.sim.start_transfer(nxt, t)

    def kv_arrived(self, req: Request, t: float) -> None:
        """The request's KV is here; it joins the batch at the next boundary (after an iteration in
        flight), after the engine's serving work for it (receiving the handoff)."""
        if not self.iterating:
            self.batch.advance_to(t)
        if self.request_busy_s:
            self._add_busy(t)
        self.ready.append(req)
        if self.iterating:
            return
        self._fill_batch()
        self._kick()

    def _fill_batch(self) -> None:
        while self.ready and self.batch.batch < self.max_seqs:
            self._join(self.ready.popleft())

    def _finished(self, req: Request, t: float) -> None:
        req.finish_at = t
        self.kv_used -= req.reserved
        req.reserved = 0
        if self.paged:
            self._release_blocks(req)
        self.sim.on_finished(req)
        if self.role == "decode":  # (hot: most finishes leave no one waiting)
            if self.pending:
                self._grant_pending(t)
            if self.ready:
                self._fill_batch()

    def _schedule_wake(self) -> None:
        batch = self.batch
        if batch is None or not batch.batch or self.iterating:
            return
        self.version += 1
        heappush(self.heap, (batch.next_change(), next(self.seq), self.on_wake, self.version))

    def _wake(self, t: float, version: int) -> None:
        if version != self.version:
            return
        self.batch.advance_to(t)
        self._kick()

    @property
    def busy_total_s(self) -> float:
        return self.busy_s + (self.batch.busy_s if self.batch is not None else 0.0)
