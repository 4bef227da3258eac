"""What prefill and decode workers share: an engine with a stepping thread, a KV handoff
endpoint and a load report."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from engine.async_engine import AsyncLLMEngine
from engine.llm_engine import LLMEngine
from kvstore.handoff import KVHandoff
from workers.messages import EngineInfo, WorkerLoad
from workers.output_channels import OutputChannels


class EngineWorker:
    role = "worker"

    def __init__(self, worker_id: str, engine: AsyncLLMEngine, handoff: KVHandoff | None):
        self.worker_id = worker_id
        self.engine = engine
        self.handoff = handoff
        self.handoff_bytes = 0
        self.incarnation = uuid.uuid4().hex  # a restarted replica (a new process) reports a new one
        self.channels = OutputChannels(abort=self.abort)

    @property
    def kv_cache(self):
        return self.engine.engine.runner.kv_cache

    async def load(self) -> WorkerLoad:
        return await self.engine.acall(self._load)

    def _load(self, e: LLMEngine) -> WorkerLoad:
        s = e.stats()
        return WorkerLoad(self.worker_id, self.role, s.num_waiting, s.num_running, s.num_free_blocks,
                          s.num_blocks, len(e.held) + len(e.awaiting_kv), self.handoff_bytes,
                          s.prefix_cache_queries, s.prefix_cache_hits, s.num_preemptions, s.step_totals,
                          self.incarnation, s.segments)

    def outputs(self, channel: str):
        """The deltas of every request started with ``channel``, in batches (output_channels.py)."""
        return self.channels.drain(channel)

    async def profile(self) -> dict:
        """The engine's step profile (engine/step_profile.py): time per phase and step kind."""
        return await self.engine.acall(lambda e: e.profile.as_dict())

    def info(self) -> EngineInfo:
        e = self.engine.engine
        return EngineInfo(self.worker_id, e.max_model_len, e.model_config.vocab_size, e.eos_token_ids,
                          e.runner.num_blocks, e.kv.block_size, str(e.device))

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def _transfer(self, direction: str, block_ids: Sequence[int], peer: str, request_id: str) -> int:
        if self.handoff is None:
            raise RuntimeError(f"{self.worker_id} has no KV transport configured")
        move = self.handoff.send if direction == "send" else self.handoff.recv
        moved = await asyncio.to_thread(move, self.kv_cache, list(block_ids), peer, request_id)
        self.handoff_bytes += moved
        return moved

    def shutdown(self) -> None:
        self.engine.shutdown()
