"""The prompt phase: run a prompt to its first token and hand its KV to a decode worker."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

import redis

from engine.async_engine import AsyncLLMEngine
from engine.kv_port import HeldKV, ImportedPrefix
from kvstore.errors import KVStoreError
from kvstore.transport import BlockTransport, Peer
from prefill_workers.host_prefix import HostPrefixCache
from workers.base import EngineWorker
from workers.messages import PrefillRequest, PrefillResult

log = logging.getLogger(__name__)
PULL_RETRY_S = 5.0  # after a failed host-tier pull, prompts are computed without trying one this long


class PrefillWorker(EngineWorker):
    """Prompts are batched by the engine's scheduler (chunked, continuously); each finished
    prompt keeps its blocks until ``send_kv`` or ``release``."""

    role = "prefill"

    def __init__(self, worker_id: str, engine: AsyncLLMEngine, transport: BlockTransport[Peer] | None,
                 host_prefix: HostPrefixCache | None = None):
        super().__init__(worker_id, engine, transport)
        self.host_prefix = host_prefix
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._host_failing = False
        self._pull_again_at = 0.0

    async def prefill(self, req: PrefillRequest) -> PrefillResult:
        params = dataclasses.replace(req.params, max_tokens=1, min_tokens=min(req.params.min_tokens, 1),
                                     stop=())
        prefix = None
        if req.host_prefix_blocks and self.host_prefix is not None:
            prefix = await self._pull(req)
        deltas = self.kv.hold(req.request_id, req.prompt_token_ids, params, req.cache_salt, req.segments, prefix)
        delta = None
        async for delta in deltas:  # noqa: B007 (the last delta is the one kept)
            pass
        return self._result(await self.kv.export_blocks(req.request_id), delta)

    async def _pull(self, req: PrefillRequest) -> ImportedPrefix | None:
        """The prefix blocks the host tier still has; none while it is unreachable or a block is
        gone or corrupt (the prompt is computed instead; one log line when pulls stop working,
        one when they work again). After a Redis error, pulls wait ``PULL_RETRY_S`` before the
        next try, so a hung Redis costs one read timeout per span, not one per prompt."""
        if self._host_failing and time.monotonic() < self._pull_again_at:
            return None
        try:
            host_prefix = cast(HostPrefixCache, self.host_prefix)  # the caller checked it is set
            imported = await host_prefix.pull(req.prompt_token_ids, req.cache_salt, req.host_prefix_blocks)
        except (redis.RedisError, KVStoreError) as e:
            if not self._host_failing:
                log.warning("host-tier pulls failing (%s: %s); computing those prefixes instead",
                            type(e).__name__, e)
            self._host_failing = True
            if isinstance(e, redis.RedisError):  # Redis away, not one bad block: stop waiting on it a while
                self._pull_again_at = time.monotonic() + PULL_RETRY_S
            return None
        if self._host_failing:
            log.warning("host-tier pulls work again")
        self._host_failing = False
        return imported

    def _result(self, held: HeldKV, delta) -> PrefillResult:
        return PrefillResult(held.request_id, self.worker_id, delta.new_token_ids[0],
                             delta.new_logprobs[0] if delta.new_logprobs else None,
                             held.num_prompt_tokens, held.num_cached_tokens + held.num_reused_tokens,
                             len(held.block_ids), held.generator_state, held.num_reused_tokens, held.exact_tokens)

    async def send_kv(self, request_id: str, peer: str, skip_blocks: int, num_blocks: int,
                      start_receive: Callable[[], Awaitable[int]]) -> int:
        """Ship ``num_blocks`` of a held prompt's blocks, after the first ``skip_blocks`` (the
        peer has those cached), to ``peer``; then free them.

        ``start_receive`` asks the peer to post its receive. Both run under this worker's
        lock for that peer: the two ends of a pair group must issue transfers in the same
        order, and with the sender alone starting both halves, they do, whoever dispatches.
        If the receive fails first (the peer cannot take the blocks, or just restarted and
        could not join), the send is cancelled and the receiver's error raised: nobody would
        take the blocks, and the send would otherwise wait out its transfer timeout.
        """
        lock = self._peer_locks.setdefault(peer, asyncio.Lock())
        stored = sending = None
        try:
            held = await self.kv.export_blocks(request_id)
            stored = asyncio.ensure_future(self._write_through(held))
            blocks = held.block_ids[skip_blocks:skip_blocks + num_blocks]
            if not blocks:
                return 0
            async with lock:
                sending = asyncio.ensure_future(self._transfer("send", blocks, peer, request_id))
                return await both_ends(asyncio.ensure_future(start_receive()), sending)
        finally:
            if stored is not None:  # the blocks are read until this ends; a failed host write is not fatal
                await asyncio.gather(stored, return_exceptions=True)
            if sending is not None and not sending.done():  # given up: the blocks are read until it ends
                sending.add_done_callback(lambda _: self.release(request_id))
            else:
                self.release(request_id)

    async def _write_through(self, held: HeldKV) -> None:
        """Copy the prompt's shared (prefix-cache hit) blocks to the host tier, while held."""
        if self.host_prefix is not None:
            await self.host_prefix.write_through(held.prompt_token_ids, held.cache_salt.decode(), held.block_ids,
                                                 held.num_cached_tokens // self.host_prefix.block_size)

    def abort(self, request_id: str) -> None:
        """Cancel a prompt still prefilling, or drop one whose KV is held for a handoff."""
        super().abort(request_id)
        self.release(request_id)

    def release(self, request_id: str) -> None:
        """Free a held prompt's blocks (queued for the engine thread, in order with later calls)."""
        self.kv.release(request_id)


async def both_ends(received: asyncio.Future, sending: asyncio.Future) -> int:
    """The bytes sent, once both ends of a handoff are done; else the first error. A receive
    that fails while the send runs ends this at once with the receiver's error: the send is
    cancelled (it gives up, and holds its blocks until it has) and left to end on its own."""
    try:
        await asyncio.wait((received, sending), return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        sending.cancel()
        raise
    if not sending.done():  # the receive failed first: nobody will take the blocks
        sending.cancel()
        sending.add_done_callback(lambda f: f.cancelled() or f.exception())
        return received.result()  # the receiver's error
    if sending.exception() is not None:  # the receive ends on its own (the group is dropped)
        received.add_done_callback(lambda f: f.cancelled() or f.exception())
    sent = sending.result()
    await received
    return sent
