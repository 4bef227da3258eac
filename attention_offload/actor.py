"""The attention pool's Ray actor: a thin shell around AttentionService."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import TYPE_CHECKING, cast

import ray
import torch

from attention_offload.service import AttentionInfo, AttentionService
from attention_offload.worker import AttentionShape
from engine.config import parse_dtype
from engine.model_config import ModelConfig
from kvstore.keys import RedisKeys
from kvstore.redis_client import connect_redis
from workers.spec import WorkerSpec, until_redis_answers

if TYPE_CHECKING:
    from kvstore.config import KVStoreConfig


@ray.remote
class AttentionActor:
    def __init__(self, spec: WorkerSpec):
        device = "cuda" if spec.use_gpu and torch.cuda.is_available() else spec.engine.device
        cfg = ModelConfig.from_dir(spec.engine.model)
        kvstore = cast("KVStoreConfig", spec.kvstore)  # an attention pool runs in a cluster, which has a kvstore
        client = until_redis_answers(lambda: connect_redis(kvstore), spec.worker_id)
        transport = dataclasses.replace(spec.transport, advertise_host=spec.transport.advertise_host
                                        or ray.util.get_node_ip_address())
        keys = RedisKeys(kvstore.key_prefix)
        dtype = parse_dtype(spec.engine.dtype or cfg.torch_dtype)
        self.service = until_redis_answers(lambda: AttentionService(
            spec.worker_id, AttentionShape.of(cfg), spec.engine.cache, dtype,
            device, spec.sessions, client, keys, transport, spec.offload.link_device if spec.offload else None),
            spec.worker_id)
        self.redis = client

    def info(self) -> AttentionInfo:
        return self.service.info()

    async def attach(self, model_id: str) -> None:
        await asyncio.to_thread(self.service.attach, model_id)

    async def receive_kv(self, request_id: str, block_ids: list[int], peer: str, model_id: str) -> int:
        return await asyncio.to_thread(self.service.receive_kv, request_id, block_ids, peer, model_id)

    def tables(self, model_id: str) -> int:
        return self.service.tables(model_id)

    def ended(self) -> dict[str, str]:
        """Why each model worker's last session ended (none while it runs)."""
        return dict(self.service.ended)

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        self.service.close()
        self.redis.close()
