"""The prompt phase: run a prompt to its first token and hand its KV to a decode worker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from cluster.messages import PrefillRequest, PrefillResult
from cluster.worker_base import EngineWorker
from engine.llm_engine import LLMEngine


class PrefillWorker(EngineWorker):
    """Prompts are batched by the engine's scheduler (chunked, continuously); each finished
    prompt keeps its blocks until ``send_kv`` or ``release``."""

    role = "prefill"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._peer_locks: dict[str, asyncio.Lock] = {}

    async def prefill(self, req: PrefillRequest) -> PrefillResult:
        params = dataclasses.replace(req.params, max_tokens=1, min_tokens=min(req.params.min_tokens, 1),
                                     stop=())
        delta = None
        async for delta in self.engine.generate(req.request_id, req.prompt_token_ids, params,
                                                req.cache_salt, hold_kv=True):
            pass
        return self.engine.call(lambda e: self._result(e, req.request_id, delta))

    def _result(self, e: LLMEngine, request_id: str, delta) -> PrefillResult:
        held = e.held_kv(request_id)
        state = held.generator.get_state().numpy().tobytes() if held.generator is not None else None
        return PrefillResult(request_id, self.worker_id, delta.new_token_ids[0],
                             delta.new_logprobs[0] if delta.new_logprobs else None,
                             held.num_prompt_tokens, held.num_cached_tokens, len(held.block_ids), state)

    async def send_kv(self, request_id: str, peer: str, skip_blocks: int, num_blocks: int,
                      start_receive: Callable[[], Awaitable[int]]) -> int:
        """Ship ``num_blocks`` of a held prompt's blocks, after the first ``skip_blocks`` (the
        peer has those cached), to ``peer``; then free them.

        ``start_receive`` asks the peer to post its receive. Both run under this worker's
        lock for that peer: the two ends of a pair group must issue transfers in the same
        order, and with the sender alone starting both halves, they do, whoever dispatches.
        """
        lock = self._peer_locks.setdefault(peer, asyncio.Lock())
        try:
            held = self.engine.call(lambda e: list(e.held_kv(request_id).block_ids))
            blocks = held[skip_blocks:skip_blocks + num_blocks]
            if not blocks:
                return 0
            async with lock:
                received = start_receive()
                sent = await self._transfer("send", blocks, peer, request_id)
                await received
            return sent
        finally:
            self.release(request_id)

    def release(self, request_id: str) -> None:
        self.engine.call(lambda e: e.release_kv(request_id))
