"""Engines and prompts for the segment-reuse tests (tiny checkpoints, fp32 on the CPU)."""

from __future__ import annotations

import random
from pathlib import Path

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SegmentConfig
from engine.llm_engine import GenerationResult, LLMEngine
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse

GREEDY = SamplingParams(max_tokens=8, temperature=0)


def make_engine(model: Path, *, num_blocks: int = 256, prefix_caching: bool = False, max_batched: int = 512,
                async_scheduling: bool | None = None, segments: SegmentConfig = SegmentConfig(),
                device: str = "cpu") -> LLMEngine:
    return LLMEngine(EngineConfig(
        model=str(model), device=device,
        cache=CacheConfig(num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
        scheduler=SchedulerConfig(max_num_batched_tokens=max_batched), async_scheduling=async_scheduling,
        segments=segments))


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def run(engine: LLMEngine, prompt: list[int], reuse: SegmentReuse | None = None,
        params: SamplingParams = GREEDY) -> GenerationResult:
    """One request to completion; its result with usage counts."""
    rid = engine.add_request(None, prompt, params, segments=reuse)
    result = GenerationResult(rid, prompt)
    while result.finish_reason is None:
        for delta in engine.step():
            if delta.request_id == rid:
                result.add(delta)
    while engine.has_unfinished():
        engine.step()
    return result
