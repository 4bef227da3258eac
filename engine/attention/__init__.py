"""Attention backends over the paged KV cache, chosen by name and imported lazily.

A backend writes a step's new keys/values into the cache, then computes attention for the
step's queries against everything cached. ``torch`` runs anywhere and is the reference;
``triton`` is the CUDA path (its module imports triton only when asked for).
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch

from engine.attention.metadata import AttentionMetadata

__all__ = ["AttentionBackend", "AttentionMetadata", "get_backend", "default_backend_name"]


class AttentionBackend(Protocol):
    name: str

    def write_kv(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store new keys/values [T, H_kv, D] at ``slot_mapping`` (slots < 0 are skipped)."""

    def forward(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Causal attention of q [T, H_q, D] over the paged cache; returns [T, H_q, D]."""


class TorchAttention:
    """The reference backend: gathers each sequence's blocks and calls SDPA."""

    name = "torch"

    def write_kv(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        from engine.attention.reference import write_kv
        write_kv(k_cache, v_cache, k, v, slot_mapping)

    def forward(self, q, k_cache, v_cache, meta, scale) -> torch.Tensor:
        if meta.shared is not None:
            from engine.attention.shared_prefix.reference import shared_prefix_decode
            return shared_prefix_decode(q, k_cache, v_cache, meta, meta.shared, scale)
        from engine.attention.reference import paged_attention
        return paged_attention(q, k_cache, v_cache, meta, scale)


_BACKENDS = {
    "torch": "engine.attention:TorchAttention",
    "triton": "engine.attention.triton_backend:TritonAttention",
}


def default_backend_name(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "torch"


def get_backend(name: str) -> AttentionBackend:
    """Instantiate the backend registered under ``name``."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(_BACKENDS)}")
    module, _, cls = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
