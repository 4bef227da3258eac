"""The embedded default checkpoint: a tiny random model written once into a cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from engine.tiny_model import make_tiny_model


def cache_dir() -> Path:
    return Path(os.environ.get("TIERSERVE_HOME", Path.home() / ".cache" / "tierserve"))


def default_model_dir() -> Path:
    """Path of the tiny default model, created on first use."""
    path = cache_dir() / "tiny-llama"
    if not (path / "model.safetensors").is_file():
        make_tiny_model(path)
    return path
