"""The decode pool's Ray actor: a thin shell around DecodeWorker (also the colocated pool)."""

from __future__ import annotations

import ray

from attention_offload.model_side import AttentionKVTransport, attach_engine
from decode_workers.worker import DecodeWorker
from engine.outputs import Reservation
from workers.actor import WorkerActor
from workers.messages import DecodeRequest, PrefillRequest
from workers.spec import WorkerSpec, build_worker


@ray.remote
class DecodeActor(WorkerActor):
    worker: DecodeWorker  # WorkerActor.worker, as this pool builds it

    def __init__(self, spec: WorkerSpec):
        self.parts = build_worker(spec, ray.util.get_node_ip_address(), attach=attach_engine)
        offload = spec.offload  # prompts' KV goes to the attention replica's cache
        self.kv_peer_id = offload.attention_id if offload is not None else spec.worker_id
        transport = AttentionKVTransport(offload, spec.worker_id) if offload is not None else self.parts.transport()
        self.worker = DecodeWorker(spec.worker_id, self.parts.engine, transport,
                                   recompute_prompts=offload is not None and not offload.receive_kv)

    def kv_peer(self) -> str:
        """The worker whose cache receives this replica's prompt KV (itself, or its attention replica)."""
        return self.kv_peer_id

    async def reserve(self, req: DecodeRequest) -> Reservation | None:
        return await self.worker.reserve(req)

    async def receive_kv(self, request_id: str, block_ids: list[int], peer: str) -> int:
        return await self.worker.receive_kv(request_id, block_ids, peer)

    async def start_stream(self, request_id: str, channel: str) -> None:
        await self.worker.start_stream(request_id, channel)

    async def start_generate(self, req: PrefillRequest, channel: str) -> None:
        await self.worker.start_generate(req, channel)
