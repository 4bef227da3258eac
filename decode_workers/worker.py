"""The token phase: take a prompt's KV from a prefill worker and stream the rest of the output.

A decode worker also serves whole requests (``start_generate``) when it runs colocated, or when
the dispatcher falls back to recomputing a prompt here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import torch

from engine.outputs import Reservation
from workers.base import EngineWorker
from workers.messages import DecodeRequest, PrefillRequest


class DecodeWorker(EngineWorker):
    """``kv_receiver``: where prompts' KV lands when it is not this worker's cache (an attention
    replica's, attention_offload): called as the receive, with the same arguments."""

    role = "decode"

    def __init__(self, worker_id: str, engine, handoff, kv_receiver: Callable[..., Awaitable[int]] | None = None,
                 recompute_prompts: bool = False):
        """``recompute_prompts``: reserve nothing and compute each prompt's KV here (its KV cannot
        be handed to this worker's cache)."""
        super().__init__(worker_id, engine, handoff)
        self.kv_receiver, self.recompute_prompts = kv_receiver, recompute_prompts

    async def reserve(self, req: DecodeRequest) -> Reservation | None:
        """Blocks to receive the prompt's KV into (after those already cached here), or None
        when this worker has no room."""
        state = None if req.generator_state is None else torch.frombuffer(
            bytearray(req.generator_state), dtype=torch.uint8)
        def reserve(e) -> Reservation | None:
            reservation = e.add_prefilled(req.request_id, req.prompt_token_ids, req.output_token_ids, req.params,
                                          state, req.cache_salt, req.exact_tokens)
            if reservation is None or not self.recompute_prompts:
                return reservation
            e.kv_not_coming(req.request_id)
            return Reservation([], 0)  # nothing to send: the prefill worker frees its copy
        return await self.engine.acall(reserve)

    async def receive_kv(self, request_id: str, block_ids: list[int], peer: str) -> int:
        """Receive reserved blocks from ``peer``; a failed transfer drops the reservation."""
        try:
            if self.kv_receiver is not None:
                return await self.kv_receiver(request_id, block_ids, peer)
            return await self._transfer("recv", block_ids, peer, request_id)
        except BaseException:
            self.abort(request_id)
            raise

    async def start_stream(self, request_id: str, channel: str) -> None:
        """Start decoding a request whose KV has arrived; its deltas go to ``channel``."""
        def start(e) -> str:
            e.kv_arrived(request_id)
            return request_id
        await self.engine.asubmit(start, self.channels.sink(channel, request_id))

    async def start_generate(self, req: PrefillRequest, channel: str) -> None:
        """A whole request, prompt included, on this worker; its deltas go to ``channel``
        (InvalidRequestError at once for bad input)."""
        def start(e) -> str:
            return e.add_request(req.request_id, req.prompt_token_ids, req.params, req.cache_salt,
                                 segments=req.segments)
        await self.engine.asubmit(start, self.channels.sink(channel, req.request_id))
