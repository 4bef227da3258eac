"""Attention offload on CUDA: a model worker (weights, dense layers) and an attention worker (Triton
attention over its paged cache) give the greedy tokens of the single-process CUDA engine (Triton, CUDA
graphs) on 64 prompts x 128 tokens, fp32. One GPU: both on it, linked by gloo through host memory (the
CUDA compute path); two GPUs: model on cuda:0, attention on cuda:1, linked by NCCL."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import redis
import torch
import torch.multiprocessing as mp

from attention_offload.link import LinkEndpoint
from attention_offload.runner import offloaded_engine
from attention_offload.worker import AttentionShape
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.model_config import ModelConfig
from engine.sampling_params import SamplingParams
from kvstore.keys import RedisKeys
from tests.attention_offload.local_offload import transport
from tests.attention_offload.offload_peers import ATTENTION, MODEL, serve_attention

pytestmark = pytest.mark.redis

PARAMS = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
BLOCKS = 2048


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def prompts(n: int = 64, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (int(torch.randint(1, 200, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def config(model, async_scheduling: bool) -> EngineConfig:
    return EngineConfig(model=str(model), device="cuda:0", async_scheduling=async_scheduling,
                        cache=CacheConfig(num_blocks=BLOCKS, enable_prefix_caching=True),
                        scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=1024))


def offloaded_tokens(redis_url, model, m: int, async_scheduling: bool, attention_device: str,
                     link_device: str) -> list[list[int]]:
    cfg = ModelConfig.from_dir(model)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    child = ctx.Process(target=serve_attention, daemon=True, args=(
        redis_url, prefix, AttentionShape.of(cfg), BLOCKS, 16, torch.float32, transport(120.0), events,
        attention_device, link_device))
    child.start()
    end = LinkEndpoint(MODEL, redis.Redis.from_url(redis_url), RedisKeys(prefix), transport(120.0),
                       "cuda:0" if link_device == "cuda" else "cpu")
    try:
        engine = offloaded_engine(config(model, async_scheduling), end.connect(ATTENTION), BLOCKS, m)
        tokens = [r.token_ids for r in engine.generate(prompts(), PARAMS)]
        assert engine.kv.num_free_blocks == BLOCKS
        engine.runner.detach()
        assert events.get(timeout=60) == ("serving", None)
        assert events.get(timeout=60) == ("ended", ("stopped", 0))
        return tokens
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
        end.close_all()


@pytest.fixture(scope="module")
def expected(tiny_model):
    return [r.token_ids for r in LLMEngine(config(tiny_model, None)).generate(prompts(), PARAMS)]


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_one_gpu_gloo_link(redis_url, tiny_model, expected, m, async_scheduling):
    assert offloaded_tokens(redis_url, tiny_model, m, async_scheduling, "cuda:0", "cpu") == expected


@pytest.mark.multi_gpu
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_two_gpus_nccl_link(redis_url, tiny_model, expected, m, async_scheduling):
    assert offloaded_tokens(redis_url, tiny_model, m, async_scheduling, "cuda:1", "cuda") == expected


def test_the_comparison_can_fail(tiny_model, expected):
    """Another model's tokens differ from the reference: equality above means something."""
    other = dataclasses.replace(config(tiny_model, None), seed=1)
    shorter = [r.token_ids for r in LLMEngine(other).generate([p[:-1] for p in prompts()], PARAMS)]
    assert shorter != expected
