"""What every pool's Ray actor answers, whatever its role: the thin shell's shared part."""

from __future__ import annotations

import os

import torch

from workers.base import EngineWorker
from workers.messages import EngineInfo, WorkerLoad
from workers.spec import WorkerParts


class WorkerActor:
    """Base of the pool actors; a subclass sets ``parts`` and ``worker`` in its __init__."""

    parts: WorkerParts
    worker: EngineWorker

    def abort(self, request_id: str) -> None:
        self.worker.abort(request_id)

    def info(self) -> EngineInfo:
        return self.worker.info()

    def device_uuid(self) -> str | None:
        """The UUID of the GPU this replica's engine runs on (None off CUDA): the physical device,
        whatever index CUDA_VISIBLE_DEVICES gives it inside the actor."""
        device = self.worker.engine.engine.device
        return str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None

    async def outputs(self, channel: str):
        """A dispatcher's batched output stream (workers/output_channels.py)."""
        async for batch in self.worker.outputs(channel):
            yield batch

    def pid(self) -> int:
        """This replica's process id (fault-injection tests kill it)."""
        return os.getpid()

    async def profile(self) -> dict:
        return await self.worker.profile()

    async def load(self) -> WorkerLoad:
        return await self.worker.load()

    def shutdown(self) -> None:
        self.parts.close()
