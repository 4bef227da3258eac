"""Engine construction shorthand for tests (tiny checkpoints come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine

_ASYNC_SCHEDULING: list[bool | None] = [None]  # None: the engine's default (on for CUDA)

# A test module that runs its engines both ways: pytestmark = BOTH_SCHEDULINGS
BOTH_SCHEDULINGS = pytest.mark.parametrize("async_scheduling", [False, True], indirect=True,
                                           ids=["sync", "async"])


@pytest.fixture(scope="module", autouse=True)
def async_scheduling(request):
    """Whether ``make_engine`` builds engines with overlapped scheduling (parametrized by
    ``BOTH_SCHEDULINGS``; the engine's default elsewhere). Module-scoped so module-scoped
    engines follow it."""
    _ASYNC_SCHEDULING[0] = getattr(request, "param", None)
    yield _ASYNC_SCHEDULING[0]
    _ASYNC_SCHEDULING[0] = None


def make_engine(model: Path, *, num_blocks: int | None = None, block_size: int = 16,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                prefix_caching: bool = False, **kwargs) -> LLMEngine:
    kwargs.setdefault("async_scheduling", _ASYNC_SCHEDULING[0])
    return LLMEngine(EngineConfig(
        model=str(model),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        **kwargs))
