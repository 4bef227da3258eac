"""Build a model for a checkpoint directory, materialized on a device with its weights."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import parse_dtype
from engine.model.llama import LlamaForCausalLM
from engine.model.weights import iter_tensors, load_weights
from engine.model_config import ModelConfig


def build_empty(cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
                max_positions: int) -> LlamaForCausalLM:
    """A model with uninitialized parameters on ``device`` and its rotary tables built."""
    model = LlamaForCausalLM(cfg, dtype=dtype, device="meta")
    model.to_empty(device=device)
    model.build_rotary(max_positions)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, dtype: torch.dtype | None, device: torch.device,
               max_positions: int | None = None, load_format: str = "safetensors") -> LlamaForCausalLM:
    """Load a Llama-family checkpoint; dtype None takes the checkpoint's own. load_format
    "dummy" reads only config.json and fills the weights with N(0, 0.02)."""
    path = Path(path)
    cfg = ModelConfig.from_dir(path)
    if dtype is None:
        dtype = parse_dtype(cfg.torch_dtype)
    model = build_empty(cfg, dtype, device, max_positions or cfg.max_position_embeddings)
    if load_format == "dummy":
        init_random(model, seed=0)
    else:
        load_weights(model, iter_tensors(path), cfg.tie_word_embeddings)
    return model


def init_random(model: LlamaForCausalLM, seed: int, std: float = 0.02) -> None:
    """Fill every parameter with N(0, std) (norm weights with ones) — for benchmarks."""
    gen = torch.Generator(device=model.model.embed_tokens.weight.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)
