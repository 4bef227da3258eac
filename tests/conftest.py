"""Shared fixtures: a real redis-server on a free port, GPU test selection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.tiny_model import TinyModelSpec, make_tiny_model
from kvstore.redis_server import RedisServer, free_port  # noqa: F401  (free_port re-exported for tests)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test session."""
    with RedisServer() as url:
        yield url


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


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """``hf_checkpoint(name)``: tests/hf_checkpoints.py's VARIANTS[name] as transformers saves it,
    with its greedy reference (made once a session)."""
    from tests.hf_checkpoints import VARIANTS, make_hf_checkpoint
    made = {}

    def make(name: str):
        if name not in made:
            made[name] = make_hf_checkpoint(tmp_path_factory.mktemp(name), VARIANTS[name])
        return made[name]
    return make


def pytest_collection_modifyitems(config, items) -> None:
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "tests/gpu/" in item.nodeid.replace(os.sep, "/") or item.nodeid.startswith("gpu/"):
            item.add_marker(pytest.mark.gpu)
        if "gpu" in item.keywords and n == 0:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "multi_gpu" in item.keywords and n < 2:
            item.add_marker(pytest.mark.skip(reason="needs two CUDA devices"))
