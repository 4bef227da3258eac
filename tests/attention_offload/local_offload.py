"""A model worker's engine and its attention worker in this process: the attention worker
serves on a thread, the two are linked by gloo pair groups formed through the test Redis."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from attention_offload.link import LinkEndpoint
from attention_offload.runner import OffloadedRunner, offloaded_engine
from attention_offload.worker import AttentionShape, AttentionWorker
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, parse_dtype
from engine.llm_engine import LLMEngine
from engine.model_config import ModelConfig
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys

SECRET = "offload-test-secret-" + "y" * 16
MODEL, ATTENTION = "decode-0", "attention-0"


def engine_config(model: Path, *, num_blocks: int = 64, block_size: int = 16, max_num_seqs: int = 64,
                  max_num_batched_tokens: int = 2048, prefix_caching: bool = False) -> EngineConfig:
    return EngineConfig(model=str(model), async_scheduling=False,
                        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks,
                                          enable_prefix_caching=prefix_caching),
                        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                                  max_num_batched_tokens=max_num_batched_tokens))


def transport(timeout_s: float = 30.0) -> TransportConfig:
    return TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=timeout_s, rendezvous_timeout_s=20.0,
                           secret=SECRET)


class LocalOffload:
    """``engine``: an LLMEngine whose attention runs on ``worker`` (its thread: ``serving``)."""

    def __init__(self, redis_url: str, config: EngineConfig, micro_batches: int, timeout_s: float = 30.0):
        self.redis = redis.Redis.from_url(redis_url)
        keys = RedisKeys(f"t-{uuid.uuid4().hex[:8]}")
        cfg = ModelConfig.from_dir(config.model)
        dtype = parse_dtype(config.dtype or cfg.torch_dtype)
        self.worker = AttentionWorker(AttentionShape.of(cfg), config.cache.num_blocks, config.cache.block_size, dtype)
        self.model_end = LinkEndpoint(MODEL, self.redis, keys, transport(timeout_s), "cpu")
        self.attention_end = LinkEndpoint(ATTENTION, self.redis, keys, transport(timeout_s), "cpu")
        with ThreadPoolExecutor(1) as pool:
            theirs = pool.submit(self.attention_end.connect, MODEL)
            self.link = self.model_end.connect(ATTENTION)
            self.attention_link = theirs.result(timeout=60)
        self.ended: list[str] = []
        self.serving = threading.Thread(target=lambda: self.ended.append(self.worker.serve(self.attention_link)),
                                        daemon=True)
        self.serving.start()
        self.engine: LLMEngine = offloaded_engine(config, self.link, config.cache.num_blocks, micro_batches)

    @property
    def runner(self) -> OffloadedRunner:
        return self.engine.runner

    def close(self) -> None:
        if not self.link.broken:
            self.runner.detach()
        self.serving.join(timeout=30)
        self.model_end.close_all()
        self.attention_end.close_all()
        self.redis.close()
