"""How long sequences may be and how many KV blocks fit on the device."""

from __future__ import annotations

import logging

import torch

from engine.config import ConfigError, EngineConfig
from engine.model.llama import LlamaForCausalLM
from engine.model_config import ModelConfig

log = logging.getLogger(__name__)


def resolve_max_model_len(cfg: ModelConfig, requested: int | None) -> int:
    """The configured max length, bounded by the positions the model was trained for and by a
    sliding window: this engine attends over full context, which is the window's attention
    only within the window, so a longer context is clipped (unset) or refused (requested)."""
    limit = cfg.max_context
    if requested is None:
        if limit < cfg.max_position_embeddings:
            log.warning("max_model_len clipped to the checkpoint's sliding_window=%d (< max_position_embeddings"
                        "=%d): sliding-window attention is not implemented", limit, cfg.max_position_embeddings)
        return limit
    if requested > limit:
        why = ("sliding_window (sliding-window attention is not implemented)"
               if limit < cfg.max_position_embeddings else "max_position_embeddings")
        raise ConfigError(f"max_model_len={requested} exceeds the model's limit of {limit} tokens, its {why}")
    return requested


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    return cfg.num_layers * 2 * block_size * cfg.kv_size * dtype.itemsize


def choose_num_blocks(model: LlamaForCausalLM, config: EngineConfig, max_model_len: int) -> int:
    """The configured block count, or as many as the memory budget allows."""
    cache = config.cache
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = bytes_per_block(model.config, cache.block_size, model.model.embed_tokens.weight.dtype)
    if model.model.embed_tokens.weight.device.type == "cuda":
        budget = _cuda_budget(cache.memory_fraction, config.scheduler.max_num_batched_tokens, model)
    else:
        budget = cache.cpu_cache_bytes
    blocks = budget // per_block
    if blocks < 1:
        raise ConfigError(f"no memory left for the KV cache ({budget} bytes for blocks of {per_block})")
    return int(blocks)


def _cuda_budget(fraction: float, max_tokens: int, model: LlamaForCausalLM) -> int:
    """Device memory for KV: fraction of the total, minus what is in use and a peak estimate
    for the activations of the largest step (hidden states, MLP intermediates, logits)."""
    cfg = model.config
    itemsize = model.model.embed_tokens.weight.dtype.itemsize
    per_token = (4 * cfg.hidden_size + 3 * cfg.intermediate_size + cfg.q_size + 2 * cfg.kv_size) * itemsize
    activations = max_tokens * per_token + 256 * cfg.vocab_size * 4
    free, total = torch.cuda.mem_get_info(model.model.embed_tokens.weight.device)
    return int(total * fraction - (total - free) - activations)
