"""What prefill and decode workers share: an engine with a stepping thread, its KV port
(engine/kv_port.py), a KV transport (kvstore/transport.py) and a load report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from engine.async_engine import AsyncLLMEngine
from engine.llm_engine import EngineStats
from kvstore.transport import BlockTransport, Peer
from workers.messages import EngineInfo, WorkerLoad
from workers.output_channels import OutputChannels


class EngineWorker:
    role = "worker"

    def __init__(self, worker_id: str, engine: AsyncLLMEngine, transport: BlockTransport[Peer] | None):
        self.worker_id = worker_id
        self.engine = engine
        self.kv = engine.kv_port
        self.transport = transport
        self.handoff_bytes = 0
        self.incarnation = uuid.uuid4().hex  # a restarted replica (a new process) reports a new one
        self.channels = OutputChannels(abort=self.abort)

    async def load(self) -> WorkerLoad:
        return self._load(await self.engine.astats())

    def _load(self, s: EngineStats) -> WorkerLoad:
        return WorkerLoad(self.worker_id, self.role, s.num_waiting, s.num_running, s.num_free_blocks,
                          s.num_blocks, s.num_kv_handoffs, self.handoff_bytes,
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
                          self.kv.num_blocks, self.kv.block_size, str(e.device))

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def _transfer(self, direction: str, block_ids: Sequence[int], peer: str, request_id: str) -> int:
        if self.transport is None:
            raise RuntimeError(f"{self.worker_id} has no KV transport configured")
        move = self.transport.send if direction == "send" else self.transport.receive
        moved = await move(list(block_ids), Peer(peer, request_id))
        self.handoff_bytes += moved
        return moved

    def shutdown(self) -> None:
        self.engine.shutdown()
