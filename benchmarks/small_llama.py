"""A Llama decoder in plain torch for training (no KV cache, whole sequences), with Hugging Face
parameter names: its state dict is the checkpoint that transformers and our engine load.

The math is transformers' LlamaForCausalLM (rotate-half rope, RMSNorm in fp32, GQA by repeating
each KV head over its group of query heads, SiLU-gated MLP); tests/test_train_small_model.py
checks its logits against transformers' on the same weights. Default rope only, no biases.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.model_config import ModelConfig
from engine.tiny_model import SPECIAL_TOKENS, TinyModelSpec, hf_config, save_tokenizer


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.q_size, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_size, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_size, bias=False)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = _rope(self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rope(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        group = self.heads // self.kv_heads  # transformers' repeat_kv: KV head i serves query heads i*group...
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Body(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class SmallLlama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.rope_scaling is not None or cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias:
            raise ValueError("SmallLlama has default rope and no biases")
        self.config = cfg
        self.model = Body(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        freqs = torch.outer(torch.arange(cfg.max_position_embeddings, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", torch.cat([freqs, freqs], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([freqs, freqs], -1).sin(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T] (positions 0..T-1)."""
        t = ids.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin)
        h = self.model.norm(h)
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def init_weights(self, std: float = 0.02) -> None:
        """N(0, std); the projections into the residual stream scaled by 1/sqrt(2 * layers)."""
        out_std = std / (2 * self.config.num_layers) ** 0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


def save_checkpoint(out: Path, model: SmallLlama, spec: TinyModelSpec, tokenizer) -> Path:
    """config.json, generation_config.json, tokenizer files and model.safetensors in spec.dtype."""
    from safetensors.torch import save_file

    from engine.config import parse_dtype
    out.mkdir(parents=True, exist_ok=True)
    bos, eos = tokenizer.token_to_id(SPECIAL_TOKENS[0]), tokenizer.token_to_id(SPECIAL_TOKENS[1])
    (out / "config.json").write_text(json.dumps(hf_config(spec, bos, eos), indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2))
    save_tokenizer(out, tokenizer, spec.max_position_embeddings)
    dtype = parse_dtype(spec.dtype)
    tensors = {n: p.detach().to("cpu", dtype).contiguous() for n, p in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> SmallLlama:
    """A float32 SmallLlama holding a saved checkpoint's weights (strict: every name, no extra)."""
    from safetensors.torch import load_file
    model = SmallLlama(ModelConfig.from_dir(path))
    tensors = {n: t.float() for n, t in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(tensors, strict=True)
    return model.to(device)
