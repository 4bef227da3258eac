"""Engine construction shorthand for tests (tiny checkpoints come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine


def make_engine(model: Path, *, num_blocks: int | None = None, block_size: int = 16,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                prefix_caching: bool = False, **kwargs) -> LLMEngine:
    return LLMEngine(EngineConfig(
        model=str(model),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        **kwargs))
