"""Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2) over a paged KV cache.

The model sees a flattened batch: ``input_ids`` and ``positions`` are [T] for all
sequences' new tokens together; a ``ForwardContext`` carries the KV cache and the
attention metadata describing where each sequence's rows start and what they attend to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.attention import AttentionBackend, AttentionMetadata
from engine.model.layers import GatedMLP, RMSNorm
from engine.model.rotary import RotaryEmbedding
from engine.model_config import ModelConfig


@dataclass
class ForwardContext:
    """Per-step inputs beside the tokens: the cache [L, 2, blocks, block_size, H_kv, D]."""

    kv_cache: torch.Tensor
    meta: AttentionMetadata
    backend: AttentionBackend


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, **factory):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.sizes = (cfg.q_size, cfg.kv_size, cfg.kv_size)
        self.scale = cfg.head_dim ** -0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.sizes), bias=cfg.qkv_bias, **factory)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias, **factory)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding,
                ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.project(x, positions, rotary)
        return self.o_proj(self.attend(q, k, v, ctx).reshape(x.shape[0], -1))

    def project(self, x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, H_q, D], k and v [T, H_kv, D] of the new tokens, rotated (views of one
        [T, q_size + 2 kv_size] buffer on CUDA, where the rotation is in place)."""
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q, k = rotary(positions, q, k)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Write k, v into this layer's cache and attend: [T, H_q, D]."""
        k_cache, v_cache = ctx.kv_cache[self.layer, 0], ctx.kv_cache[self.layer, 1]
        ctx.backend.write_kv(k_cache, v_cache, k, v, ctx.meta.slot_mapping)
        return ctx.backend.forward(q, k_cache, v_cache, ctx.meta, self.scale)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, **factory):
        super().__init__()
        self.self_attn = Attention(cfg, layer, **factory)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, **factory)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                rotary: RotaryEmbedding, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's output, the residual stream before it): the residual add is fused
        into the next norm."""
        q, k, v, residual = self.pre_attention(h, residual, positions, rotary)
        return self.post_attention(self.self_attn.attend(q, k, v, ctx), residual)

    def pre_attention(self, h: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                      rotary: RotaryEmbedding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The half before attention (norm, qkv projection, rotary): q, k, v and the residual."""
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        q, k, v = self.self_attn.project(h, positions, rotary)
        return q, k, v, residual

    def post_attention(self, attn: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The half after attention (o_proj, residual add, norm, MLP) of attention output [T, H_q, D]."""
        h, residual = self.post_attention_layernorm(self.self_attn.o_proj(attn.reshape(attn.shape[0], -1)),
                                                    residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, **factory):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, **factory)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, **factory) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)


class LlamaForCausalLM(nn.Module):
    """Parameters are named as in Hugging Face checkpoints, except the fused
    ``qkv_proj`` and ``gate_up_proj`` (see engine.model.weights for the mapping)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str = "meta"):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.config = cfg
        self.model = LlamaModel(cfg, **factory)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False, **factory)
        self.rotary: RotaryEmbedding | None = None

    def build_rotary(self, max_positions: int) -> None:
        """Build cos/sin tables on the parameters' device (after they are materialized)."""
        weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(self.config, max_positions, weight.device, weight.dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        """Final hidden states [T, hidden] for the flattened batch."""
        h, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            h, residual = layer(h, residual, positions, self.rotary, ctx)
        return self.model.norm(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [N, vocab] for the given rows of hidden states."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight).float()
