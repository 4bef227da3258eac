"""Tiny checkpoints for engine tests, written once per session per spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.tiny_model import TinyModelSpec, make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    made: dict[str, Path] = {}

    def make(spec: TinyModelSpec = TinyModelSpec()) -> Path:
        key = repr(spec)
        if key not in made:
            made[key] = make_tiny_model(tmp_path_factory.mktemp("tiny"), spec)
        return made[key]
    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory) -> Path:
    return tiny_model_factory()


def make_engine(model: Path, *, num_blocks: int | None = None, block_size: int = 16,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                prefix_caching: bool = False, **kwargs) -> LLMEngine:
    return LLMEngine(EngineConfig(
        model=str(model),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        **kwargs))
