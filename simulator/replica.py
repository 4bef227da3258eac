"""One simulated engine replica: a prefill queue run in token-budgeted, chunked iterations, a
decode batch, or both (colocated: prefill chunks ride along with decode steps, Sarathi-style).

KV memory is reserved when a request starts: its prompt on a prefill replica (held until the KV
has left), prompt + output on a colocated or decode replica, so nothing is ever preempted.
With a paged prefix cache (Design.paged_kv, colocated only) a request reserves only what the
cache does not hold, its prompt's blocks move to the cache once computed, and the cache gets
the memory running requests leave (blocks they use are pinned there).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from simulator.decode_batch import DecodeBatch
from simulator.operators import Work
from simulator.prefix_cache import PagedPrefixCache, PrefixCache
from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.shared_prefix import SharedPrefixes

if TYPE_CHECKING:
    from simulator.simulation import Simulation


class Replica:
    __slots__ = ("sim", "pool", "role", "cost", "kv_capacity", "max_seqs", "max_tokens", "cache", "block_tokens",
                 "queue", "queued_tokens", "kv_used", "pending", "pending_tokens", "ready", "batch", "iterating",
                 "current", "version", "busy_s", "nic_free", "paged")

    def __init__(self, sim: Simulation, pool: str, role: str, cost: IterationCost, kv_capacity: int,
                 max_seqs: int, max_tokens: int, cache: PrefixCache | None, block_tokens: int,
                 share_prefixes: bool = False) -> None:
        self.sim, self.pool, self.role, self.cost = sim, pool, role, cost
        self.kv_capacity, self.max_seqs, self.max_tokens = kv_capacity, max_seqs, max_tokens
        self.cache, self.block_tokens = cache, block_tokens
        self.queue: deque[Request] = deque()    # prefill: waiting or part-way (started ones first)
        self.queued_tokens = 0                   # prompt tokens still to compute in the queue
        self.kv_used = 0
        self.pending: deque[Request] = deque()  # decode: waiting for a KV reservation
        self.pending_tokens = 0
        self.ready: deque[Request] = deque()    # decode: KV arrived, waiting for a batch slot
        shared = SharedPrefixes(cost, block_tokens) if share_prefixes else None
        self.batch = None if role == "prefill" else DecodeBatch(cost, sim.segments, self._finished, shared)
        self.iterating = False
        self.current: list[tuple[Request, int]] = []
        self.version = 0                         # bumps cancel scheduled decode wake-ups
        self.busy_s = 0.0
        self.nic_free = 0.0                      # when this replica's NIC is free for the next KV transfer
        self.paged = isinstance(cache, PagedPrefixCache)

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
        if not self.iterating:
            self._start_iteration(self._boundary(t))

    def _boundary(self, t: float) -> float:
        if self.batch is None:
            return t
        self.batch.advance_to(t)
        return self.batch.t

    def _start_iteration(self, t: float) -> None:
        chunks = self._take_chunks(t)
        if not chunks:
            self._schedule_wake()
            return
        tokens = logits = attended = kv_read = 0
        for req, n in chunks:
            tokens += n
            logits += n == req.remaining
            attended += n * req.computed + n * (n + 1) // 2
            kv_read += req.computed + n
        if self.batch is not None and self.batch.batch:
            b, c = self.batch.batch, self.batch.context
            tokens, logits, attended, kv_read = tokens + b, logits + b, attended + c, kv_read + c
        seconds = self.cost.seconds(Work(tokens, logits, attended, kv_read))
        self.iterating, self.current = True, chunks
        self.version += 1
        self.sim.push(t + seconds, self._iteration_end, seconds)

    def _take_chunks(self, t: float) -> list[tuple[Request, int]]:
        running = self.batch.batch if self.batch is not None else 0
        budget, seqs = self.max_tokens - running, self.max_seqs - running
        chunks = []
        for req in self.queue:
            if budget <= 0 or seqs <= 0:
                break
            if req.prefill_start < 0 and not self._start(req, t):
                break
            n = min(req.remaining, budget)
            chunks.append((req, n))
            budget -= n
            seqs -= 1
        return chunks

    def _start(self, req: Request, t: float) -> bool:
        if self.paged:
            return self._start_paged(req, t)
        need = req.prompt if self.role == "prefill" else req.prompt + req.output
        if self.kv_used + need > self.kv_capacity:
            return False
        self.kv_used += need
        req.reserved = need
        req.prefill_start = t
        if self.cache is not None and req.hash_ids:
            req.cached = min(self.cache.lookup(req.hash_ids) * self.block_tokens, req.prompt - 1)
            req.computed, req.remaining = req.cached, req.prompt - req.cached
            self.queued_tokens -= req.cached
        return True

    def _start_paged(self, req: Request, t: float) -> bool:
        """Reserve what the cache does not hold; the cached leading blocks are pinned, not copied
        (as the engine: at most (prompt - 1) // block of them, the last token is computed)."""
        cache, block = self.cache, self.block_tokens
        hits = req.hash_ids[:min(cache.peek(req.hash_ids), (req.prompt - 1) // block)] if req.hash_ids else ()
        need = req.prompt + req.output - len(hits) * block
        if self.kv_used + need + (len(cache.pins) + cache.unpinned(hits)) * block > self.kv_capacity:
            return False
        cache.lookup(hits)
        cache.pin(hits)
        self.kv_used += need
        req.reserved = need
        req.prefill_start = t
        req.cached = req.computed = len(hits) * block
        req.remaining = req.prompt - req.cached
        self.queued_tokens -= req.cached
        self._resize_cache()
        return True

    def _full_blocks(self, req: Request) -> tuple[int, ...]:
        """The prompt's full blocks: what the engine publishes to its prefix cache."""
        return req.hash_ids[:req.prompt // self.block_tokens] if req.hash_ids else ()

    def _resize_cache(self) -> None:
        self.cache.capacity = (self.kv_capacity - self.kv_used) // self.block_tokens
        self.cache.evict()

    def _iteration_end(self, t: float, seconds: float) -> None:
        self.iterating = False
        self.busy_s += seconds
        if self.batch is not None:
            self.batch.step(seconds)
        for req, n in self.current:
            req.remaining -= n
            req.computed += n
            self.queued_tokens -= n
        queue = self.queue
        while queue and queue[0].remaining == 0:
            self._prefilled(queue.popleft(), t)
        if queue:
            self._start_iteration(t)
        else:
            self._schedule_wake()

    def _prefilled(self, req: Request, t: float) -> None:
        req.ttft_at = t
        if self.paged:  # the computed full blocks move from the request's reservation to the cache
            cache, computed = self.cache, self._full_blocks(req)[req.cached // self.block_tokens:]
            moved = sum(self.block_tokens for h in computed if h not in cache.blocks)
            self.kv_used -= moved
            req.reserved -= moved
            cache.capacity = (self.kv_capacity - self.kv_used) // self.block_tokens
            cache.pin(computed)
            cache.insert(self._full_blocks(req))
        elif self.cache is not None and req.hash_ids:
            self.cache.insert(req.hash_ids)
        if self.role == "prefill":
            self.sim.on_prefilled(req, t)
        elif req.output == 1:
            self._finished(req, t)
        else:
            self.batch.join(req)

    def release_prefill(self, req: Request, t: float) -> None:
        """The request's KV has left this prefill replica."""
        self.kv_used -= req.prompt
        if self.queue and not self.iterating:
            self._start_iteration(t)

    # ---- decode side
    def reserve(self, req: Request) -> bool:
        """Reserve KV for a prefilled request, or queue it until memory frees (then the simulation
        is told to start its transfer)."""
        req.decode_replica = self
        need = req.prompt + req.output
        if not self.pending and self.kv_used + need <= self.kv_capacity:
            self.kv_used += need
            req.reserved = need
            return True
        self.pending.append(req)
        self.pending_tokens += need
        return False

    def kv_arrived(self, req: Request, t: float) -> None:
        self.batch.advance_to(t)
        self.ready.append(req)
        self._fill_batch()
        self._schedule_wake()

    def _fill_batch(self) -> None:
        while self.ready and self.batch.batch < self.max_seqs:
            self.batch.join(self.ready.popleft())

    def _finished(self, req: Request, t: float) -> None:
        req.finish_at = t
        self.kv_used -= req.reserved
        if self.paged:
            self.cache.unpin(self._full_blocks(req))
            self.cache.capacity = (self.kv_capacity - self.kv_used) // self.block_tokens
        self.sim.on_finished(req)
        if self.role == "decode":
            while self.pending and self.kv_used + self.pending[0].prompt + self.pending[0].output <= self.kv_capacity:
                nxt = self.pending.popleft()
                self.pending_tokens -= nxt.prompt + nxt.output
                self.kv_used += nxt.prompt + nxt.output
                nxt.reserved = nxt.prompt + nxt.output
                self.sim.start_transfer(nxt, t)
            self._fill_batch()

    def _schedule_wake(self) -> None:
        if self.batch is None or not self.batch.batch or self.iterating:
            return
        self.version += 1
        self.sim.push(self.batch.next_change(), self._wake, self.version)

    def _wake(self, t: float, version: int) -> None:
        if version != self.version:
            return
        self.batch.advance_to(t)
        if self.queue and not self.iterating:
            self._start_iteration(self.batch.t)
        else:
            self._schedule_wake()

    @property
    def busy_total_s(self) -> float:
        return self.busy_s + (self.batch.busy_s if self.batch is not None else 0.0)
