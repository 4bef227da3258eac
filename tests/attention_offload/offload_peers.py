"""An attention worker or a model worker in a process of its own, so that a test can kill it
(a real death: its sockets close, the peer's transfers fail)."""

from __future__ import annotations

import time

import redis
import torch

from attention_offload.link import LinkEndpoint
from attention_offload.runner import offloaded_engine
from attention_offload.worker import AttentionShape, AttentionWorker
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys

MODEL, ATTENTION = "decode-0", "attention-0"


def serve_attention(redis_url: str, prefix: str, shape: AttentionShape, num_blocks: int, block_size: int,
                    dtype: torch.dtype, transport: TransportConfig, events, device: str = "cpu",
                    link_device: str = "cpu") -> None:
    """Serve model workers one session after another; report each session's end
    (its reason and the block tables left)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    else:
        torch.set_num_threads(1)
    worker = AttentionWorker(shape, num_blocks, block_size, dtype, device)
    end = LinkEndpoint(ATTENTION, redis.Redis.from_url(redis_url), RedisKeys(prefix), transport, link_device)
    while True:
        link = end.connect(MODEL)
        events.put(("serving", None))
        reason = worker.serve(link)
        events.put(("ended", (reason, len(worker.mirror))))
        end.close(MODEL)
        if reason == "stopped":
            return


def run_model(redis_url: str, prefix: str, config: EngineConfig, micro_batches: int, prompts: list[list[int]],
              params: SamplingParams, until_tokens: int, transport: TransportConfig, events) -> None:
    """A model worker that runs ``prompts`` until each has ``until_tokens`` tokens, says so, and
    waits to be killed."""
    torch.set_num_threads(1)
    end = LinkEndpoint(MODEL, redis.Redis.from_url(redis_url), RedisKeys(prefix), transport, "cpu")
    engine = offloaded_engine(config, end.connect(ATTENTION), config.cache.num_blocks, micro_batches)
    got = {engine.add_request(f"r{i}", p, params): 0 for i, p in enumerate(prompts)}
    while min(got.values()) < until_tokens:
        for delta in engine.step():
            got[delta.request_id] += len(delta.new_token_ids)
    events.put(("stepped", len(engine.scheduler.running)))
    time.sleep(3600)
