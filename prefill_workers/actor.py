"""The prefill pool's Ray actor: a thin shell around PrefillWorker."""

from __future__ import annotations

import ray

from engine.outputs import Reservation
from prefill_workers.host_prefix import connect_host_prefix
from prefill_workers.worker import PrefillWorker
from workers.actor import WorkerActor
from workers.messages import PrefillRequest, PrefillResult
from workers.spec import WorkerSpec, build_worker


@ray.remote
class PrefillActor(WorkerActor):
    worker: PrefillWorker  # WorkerActor.worker, as this pool builds it

    def __init__(self, spec: WorkerSpec):
        self.parts = build_worker(spec, ray.util.get_node_ip_address())
        host_prefix = connect_host_prefix(spec, self.parts) if spec.host_tier_writes else None
        self.worker = PrefillWorker(spec.worker_id, self.parts.engine, self.parts.transport(), host_prefix)
        self.kv_peers: dict[str, str] = {}  # decode replica -> the worker whose cache takes its KV

    async def prefill(self, req: PrefillRequest) -> PrefillResult:
        return await self.worker.prefill(req)

    async def send_kv(self, request_id: str, peer: str, peer_actor, reservation: Reservation) -> int:
        """Hand a held prompt's KV to the decode replica ``peer`` (its actor handle and the
        blocks it reserved after those it had cached)."""
        def start_receive():
            return peer_actor.receive_kv.remote(request_id, reservation.block_ids, self.worker.worker_id)
        if peer not in self.kv_peers:  # an offloaded decode replica's KV lives on its attention replica
            try:
                self.kv_peers[peer] = await peer_actor.kv_peer.remote()
            except BaseException:
                self.worker.release(request_id)
                raise
        return await self.worker.send_kv(request_id, self.kv_peers[peer], reservation.num_cached_blocks,
                                         len(reservation.block_ids), start_receive)

    def release(self, request_id: str) -> None:
        self.worker.release(request_id)
