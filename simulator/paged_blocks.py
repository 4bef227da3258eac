"""A replica's KV in paged blocks that its prefix cache shares (Design.paged_kv, colocated only):
the part of simulator/replica.py's Replica that keeps them, as a base class it inherits.

With a paged prefix cache (Design.paged_kv, colocated only) a request reserves only what the cache
does not hold (reserved: and its output), its prompt's full blocks move to the cache once computed
and are pinned there while it runs, and the cache gets the memory the requests' own KV leaves.
On demand, a pinned block counts once however many running sequences use it: ``kv_used`` is the
prefill reservations plus the pinned blocks less the running sequences' tokens in them (their
``shared_kv``), so ``kv_used + batch.context`` is the KV held (the decode batch's memory test, the
non-paged one, reads it). Blocks idle in the cache do not count: they give way to running
requests' growth (least recently released first, as the engine's free queue), and the cache's
``capacity`` is set to what is left at the events that read or grow it (admissions, prompts
cached, finishes and preemptions; the router's peek reads it as of the replica's last event). A
preempted sequence frees its own KV; its prompt's blocks stay cached, unpinned, and its
recompute may hit them (the engine's match_prefix on a freed request).
"""

from __future__ import annotations

from typing import Any

from simulator.request import Request


class PagedBlocks:
    """Replica's paged-cache methods; the attributes are Replica's (simulator/replica.py)."""

    __slots__ = ()
    cache: Any           # a PagedPrefixCache wherever these run
    block_tokens: int
    kv_capacity: int
    kv_used: int
    batch: Any           # the replica's DecodeBatch
    on_demand: bool
    queued_tokens: int
    evicted_k: int

    def _start_paged(self, req: Request, t: float) -> bool:
        """Reserve what the cache does not hold; the cached leading blocks are pinned, not copied
        (as the engine: at most (prompt - 1) // block of them, the last token is computed)."""
        if self.on_demand:
            return self._start_paged_on_demand(req, t)
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

    def _start_paged_on_demand(self, req: Request, t: float) -> bool:
        """Reserve the uncached part of the prompt (a recompute's: and of the tokens it made);
        the cached leading full blocks are pinned (the engine's match_prefix: at most
        (tokens - 1) // block of them). Fits beside the KV held now, idle cached blocks evicted."""
        cache, block = self.cache, self.block_tokens
        room = self.kv_capacity - self.kv_used - self.batch.context
        self._fit_cache(self.batch.context)
        cache.evict()
        tokens = req.prompt + req.generated
        n = 0
        if req.hash_ids:
            n = min(cache.peek(req.hash_ids), req.prompt // block, (tokens - 1) // block)
        hits = req.hash_ids[:n] if n else ()
        fresh = cache.unpinned(hits) * block  # idle cached blocks that become held
        need = tokens - n * block
        if need + fresh > room:
            return False
        cache.lookup(hits)
        cache.pin(hits)
        self.kv_used += need + fresh
        self._fit_cache(self.batch.context)
        req.reserved = need
        req.shared_kv = n * block
        req.prefill_start = t
        req.cached = req.computed = n * block
        req.remaining -= req.cached
        self.queued_tokens -= req.cached
        return True

    def _cache_prompt(self, req: Request) -> None:
        """The prompt's computed full blocks move from the request's reservation to the cache,
        pinned (one the cache holds already stays the request's own, as the engine's standby copy).
        On demand, the request's tokens in cached blocks also leave what ``kv_used`` holds for it:
        it runs (or finishes) now."""
        cache, block = self.cache, self.block_tokens
        if not self.on_demand:
            computed = self._full_blocks(req)[req.cached // block:]
            moved = sum(block for h in computed if h not in cache.blocks)
            self.kv_used -= moved
            req.reserved -= moved
            cache.capacity = (self.kv_capacity - self.kv_used) // block
            cache.pin(computed)
            cache.insert(self._full_blocks(req))
            return
        pins, blocks = cache.pins, cache.blocks
        self._fit_cache(self.batch.context)
        cache.evict()  # what the KV held since the last event left of the cache, before looking in it
        full = self._full_blocks(req)
        computed = full[req.cached // block:]
        moved = sum(block for h in computed if h not in blocks)
        held = len(pins)
        cache.pin(computed)
        req.reserved -= moved
        req.shared_kv += moved
        self.kv_used += (len(pins) - held) * block - moved
        self._fit_cache(self.batch.context)
        cache.insert(full)
        self.kv_used -= req.shared_kv

    def _evict_with(self, req: Request) -> None:
        """Paged on demand, ``req`` just left the batch (finished or preempted) and its KV is about
        to be released: first the cache gives way to the KV the batch wrote by this boundary (at
        the run's last step, ``req`` and any other sequence leaving here still in it: done at the
        first to leave; each sequence's context counts the token its next step writes)."""
        batch = self.batch
        if batch.k == self.evicted_k:
            return
        self.evicted_k = batch.k
        self._fit_cache(batch.context + req.prompt + req.generated - batch.batch - 1)  # what it wrote
        self.cache.evict()

    def _release_blocks(self, req: Request) -> None:
        """The request is done with its prompt's blocks (finished; on demand also preempted, its own
        KV freed by the batch): they stay cached, unpinned; on demand most recently released (the
        first block last, as the engine frees a sequence's blocks last to first)."""
        cache, block = self.cache, self.block_tokens
        full = self._full_blocks(req)
        if not self.on_demand:
            cache.unpin(full)
            cache.capacity = (self.kv_capacity - self.kv_used) // block
            return
        pins = cache.pins
        held = len(pins)
        cache.release(full)
        self.kv_used += req.shared_kv - (held - len(pins)) * block
        req.shared_kv = 0
        self._fit_cache(self.batch.context)

    def _fit_cache(self, held: int) -> None:
        """On demand: the cache may hold its pinned blocks and the idle ones that fit in what
        ``kv_used`` and ``held`` more tokens (the running sequences' own KV) leave."""
        cache = self.cache
        cache.capacity = (self.kv_capacity - self.kv_used - held) // self.block_tokens + len(cache.pins)

    def _full_blocks(self, req: Request) -> tuple[int, ...]:
        """The prompt's full blocks: what the engine publishes to its prefix cache."""
        return req.hash_ids[:req.prompt // self.block_tokens] if req.hash_ids else ()

    def _resize_cache(self) -> None:
        self.cache.capacity = (self.kv_capacity - self.kv_used) // self.block_tokens
        self.cache.evict()
