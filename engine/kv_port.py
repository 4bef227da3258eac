"""The engine's KV interface: how a request's KV leaves one engine and enters another.

Workers move KV bytes with a transport (kvstore/transport.py) over ``cache`` and the block
ids this port hands out; the block accounting (which blocks a request holds, room reserved
for KV on its way, imported blocks published to the prefix cache, freeing) runs on the
engine's stepping thread, queued through AsyncLLMEngine like every other command. The split
is vLLM v1's KV connector's: this port is the scheduler side, a transport the worker side.

    export (prefill)   hold -> export_blocks -> transport send -> release
    import (decode)    import_blocks -> transport receive -> arrived   (abort on failure)
    host-tier prefix   reserve_prefix -> transport receive -> hold(prefix=...)   (free_prefix on failure)

A transport reads or writes ``cache`` off the engine thread, and only the blocks handed out
here and not yet given back: the engine does not touch them meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.block_hash import BlockHash
from engine.outputs import RequestOutput, Reservation
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.async_engine import AsyncLLMEngine
    from engine.block_pool import BlockEvents
    from engine.llm_engine import LLMEngine
    from engine.segments.spec import SegmentReuse
    from engine.segments.store import SegmentEvents


@dataclass(frozen=True)
class HeldKV:
    """A finished prompt whose blocks are held for a handoff: ``block_ids`` hold the KV of its
    prompt (and of ``num_cached_tokens`` prefix-cache hits among it)."""

    request_id: str
    prompt_token_ids: list[int]
    cache_salt: bytes
    block_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int   # prefix-cache hits
    num_reused_tokens: int   # filled from the segment store
    exact_tokens: int | None  # the KV is exact for these leading tokens only (None: all)
    generator_state: bytes | None  # the sampler's random state, for the engine that continues


@dataclass(frozen=True)
class ImportedPrefix:
    """Blocks from ``reserve_prefix`` that now hold a prompt's leading blocks (``hashes``, a
    chain from the root), copied in from elsewhere (the host tier)."""

    block_ids: list[int]
    hashes: list[BlockHash]


class KVPort:
    """The KV side of one engine (``AsyncLLMEngine.kv_port``)."""

    def __init__(self, engine: AsyncLLMEngine):
        self._engine = engine

    @property
    def cache(self) -> torch.Tensor:
        """The paged cache ``[layers, 2, blocks, block_size, kv_heads, head_dim]`` the block ids
        index (AttributeError for an engine whose cache lives elsewhere: attention_offload)."""
        return self._engine.engine.runner.kv_cache  # type: ignore[attr-defined]

    @property
    def block_size(self) -> int:
        return self._engine.engine.kv.block_size

    @property
    def num_blocks(self) -> int:
        return self._engine.engine.runner.num_blocks

    # -- export -------------------------------------------------------------------------------
    def hold(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
             cache_salt: str | None = None, segments: SegmentReuse | None = None,
             prefix: ImportedPrefix | None = None) -> AsyncGenerator[RequestOutput, None]:
        """Run a prompt and stream its deltas; its blocks are then held until ``release``.
        ``prefix``: imported leading blocks, published to the prefix cache in the same engine
        command that queues the prompt (no step can evict them in between)."""
        def start(e: LLMEngine) -> str:
            if prefix is not None and prefix.block_ids:
                e.kv.commit_import(prefix.block_ids, prefix.hashes)
            return e.add_request(request_id, prompt_token_ids, params, cache_salt, hold_kv=True, segments=segments)
        return self._engine.stream(start)

    async def export_blocks(self, request_id: str) -> HeldKV:
        """The held prompt's blocks and what the engine that continues it needs (KeyError if
        ``request_id`` holds no KV here)."""
        return await self._engine.acall(lambda e: _held(e, request_id))

    def release(self, request_id: str) -> None:
        """Free a held prompt's blocks (queued, in order with later calls; no-op if none)."""
        self._engine.post(lambda e: e.release_kv(request_id))

    # -- import -------------------------------------------------------------------------------
    async def import_blocks(self, request_id: str, prompt_token_ids: list[int], output_token_ids: list[int],
                            params: SamplingParams, generator_state: bytes | None = None,
                            cache_salt: str | None = None, exact_tokens: int | None = None,
                            compute_here: bool = False) -> Reservation | None:
        """Reserve blocks for a prompt whose KV another engine computed: the reservation lists
        the blocks to receive into (after those this engine has cached); None without room.
        ``compute_here``: no KV will come (this cache cannot be reached): nothing to receive,
        the prompt is computed here when it runs."""
        def reserve(e: LLMEngine) -> Reservation | None:
            state = None if generator_state is None else _state_tensor(generator_state)
            reservation = e.add_prefilled(request_id, prompt_token_ids, output_token_ids, params, state,
                                          cache_salt, exact_tokens)
            if reservation is None or not compute_here:
                return reservation
            e.kv_not_coming(request_id)
            return Reservation([], 0)
        return await self._engine.acall(reserve)

    async def arrived(self, request_id: str, sink: asyncio.Queue) -> None:
        """The reserved blocks hold the KV: the request starts decoding, its deltas go to ``sink``
        (AsyncLLMEngine.submit)."""
        def start(e: LLMEngine) -> str:
            e.kv_arrived(request_id)
            return request_id
        await self._engine.asubmit(start, sink)

    # -- prefix blocks from elsewhere (the host tier) -------------------------------------------
    async def reserve_prefix(self, num_blocks: int) -> list[int] | None:
        """Free blocks to copy a prompt's leading blocks into (None without room or without
        prefix caching); then ``hold(prefix=...)``, or ``free_prefix`` if the copy failed."""
        return await self._engine.acall(lambda e: e.kv.reserve_import(num_blocks))

    async def free_prefix(self, block_ids: list[int]) -> None:
        await self._engine.acall(lambda e: e.kv.cancel_import(block_ids))

    # -- events ---------------------------------------------------------------------------------
    def drain_events(self) -> list[BlockEvents | SegmentEvents]:
        """The prefix cache's stored / evicted blocks and the segment store's events since the
        last drain, those not empty (waits for the engine thread: call from another thread)."""
        return self._engine.call(_drain)


def _held(e: LLMEngine, request_id: str) -> HeldKV:
    req = e.held_kv(request_id)
    state = req.generator.get_state().numpy().tobytes() if req.generator is not None else None
    return HeldKV(req.request_id, req.prompt_token_ids, req.cache_salt, req.block_ids, req.num_prompt_tokens,
                  req.num_cached_tokens, req.num_reused_tokens, req.exact_tokens, state)


def _state_tensor(state: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def _drain(e: LLMEngine) -> list[BlockEvents | SegmentEvents]:
    events: list[BlockEvents | SegmentEvents] = [e.kv.drain_events()]
    if e.segments is not None:
        events.append(e.segments.store.drain_events())
    return [batch for batch in events if batch]
