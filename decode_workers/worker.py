"""The token phase: take a prompt's KV from a prefill worker and stream the rest of the output.

A decode worker also serves whole requests (``start_generate``) when it runs colocated, or when
the dispatcher falls back to recomputing a prompt here.
"""

from __future__ import annotations

import torch

from cluster.messages import DecodeRequest, PrefillRequest
from cluster.worker_base import EngineWorker
from engine.llm_engine import Reservation


class DecodeWorker(EngineWorker):
    role = "decode"

    async def reserve(self, req: DecodeRequest) -> Reservation | None:
        """Blocks to receive the prompt's KV into (after those already cached here), or None
        when this worker has no room."""
        state = None if req.generator_state is None else torch.frombuffer(
            bytearray(req.generator_state), dtype=torch.uint8)
        return await self.engine.acall(lambda e: e.add_prefilled(
            req.request_id, req.prompt_token_ids, req.output_token_ids, req.params, state, req.cache_salt))

    async def receive_kv(self, request_id: str, block_ids: list[int], peer: str) -> int:
        """Receive reserved blocks from ``peer``; a failed transfer drops the reservation."""
        try:
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
            return e.add_request(req.request_id, req.prompt_token_ids, req.params, req.cache_salt)
        await self.engine.asubmit(start, self.channels.sink(channel, req.request_id))
