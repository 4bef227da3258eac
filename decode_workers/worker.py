"""The token phase: take a prompt's KV from a prefill worker and stream the rest of the output.

A decode worker also serves whole requests (``start_generate``) when it runs colocated, or when
the dispatcher falls back to recomputing a prompt here.
"""

from __future__ import annotations

from engine.async_engine import AsyncLLMEngine
from engine.outputs import Reservation
from kvstore.transport import BlockTransport, Peer
from workers.base import EngineWorker
from workers.messages import DecodeRequest, PrefillRequest


class DecodeWorker(EngineWorker):
    """``transport`` receives prompts' KV into this worker's cache, or (attention_offload) into
    its attention replica's."""

    role = "decode"

    def __init__(self, worker_id: str, engine: AsyncLLMEngine, transport: BlockTransport[Peer] | None,
                 recompute_prompts: bool = False):
        """``recompute_prompts``: reserve nothing and compute each prompt's KV here (its KV cannot
        be handed to this worker's cache)."""
        super().__init__(worker_id, engine, transport)
        self.recompute_prompts = recompute_prompts

    async def reserve(self, req: DecodeRequest) -> Reservation | None:
        """Blocks to receive the prompt's KV into (after those already cached here), or None
        when this worker has no room."""
        return await self.kv.import_blocks(req.request_id, req.prompt_token_ids, req.output_token_ids, req.params,
                                           req.generator_state, req.cache_salt, req.exact_tokens,
                                           compute_here=self.recompute_prompts)

    async def receive_kv(self, request_id: str, block_ids: list[int], peer: str) -> int:
        """Receive reserved blocks from ``peer``; a failed transfer drops the reservation."""
        try:
            return await self._transfer("recv", block_ids, peer, request_id)
        except BaseException:
            self.abort(request_id)
            raise

    async def start_stream(self, request_id: str, channel: str) -> None:
        """Start decoding a request whose KV has arrived; its deltas go to ``channel``."""
        await self.kv.arrived(request_id, self.channels.sink(channel, request_id))

    async def start_generate(self, req: PrefillRequest, channel: str) -> None:
        """A whole request, prompt included, on this worker; its deltas go to ``channel``
        (InvalidRequestError at once for bad input)."""
        def start(e) -> str:
            return e.add_request(req.request_id, req.prompt_token_ids, req.params, req.cache_salt,
                                 segments=req.segments)
        await self.engine.asubmit(start, self.channels.sink(channel, req.request_id))
