"""The architecture of a Hugging Face checkpoint, read from its config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names what is wrong."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 ("llama3") or linear position scaling of rotary embeddings."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @staticmethod
    def parse(raw: dict | None) -> RopeScaling | None:
        if not raw:
            return None
        kind = raw.get("rope_type", raw.get("type"))
        if kind == "default":
            return None
        if kind not in ("llama3", "linear"):
            raise CheckpointError(f"unsupported rope_scaling type {kind!r} (supported: llama3, linear)")
        fields = {k: raw[k] for k in ("low_freq_factor", "high_freq_factor",
                                      "original_max_position_embeddings") if k in raw}
        return RopeScaling(kind=kind, factor=float(raw["factor"]), **fields)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(f"num_attention_heads={self.num_heads} is not a multiple of "
                                  f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @staticmethod
    def from_dict(raw: dict) -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(f"unsupported architecture {archs or '(none given)'}; "
                                  f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        try:
            return ModelConfig._from_fields(arch, raw)
        except KeyError as e:
            raise CheckpointError(f"config.json lacks required field {e.args[0]!r}") from None

    @staticmethod
    def _from_fields(arch: str, raw: dict) -> ModelConfig:
        heads = int(raw["num_attention_heads"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        use_window = raw.get("use_sliding_window", arch == "MistralForCausalLM")
        return ModelConfig(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=RopeScaling.parse(raw.get("rope_scaling")),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            o_bias=arch != "Qwen2ForCausalLM" and bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=raw.get("sliding_window") if use_window else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        )

    @staticmethod
    def from_dir(path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"model directory {path} does not exist")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise CheckpointError(f"{path} has no config.json")
        try:
            raw = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg} is not valid JSON: {e}") from None
        return ModelConfig.from_dict(raw)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim
