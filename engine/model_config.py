"""The architecture of a Hugging Face checkpoint, read from its config.json.

The one place a checkpoint's config becomes the engine's ``ModelConfig``. Both field styles
are read: what transformers 5 writes (``dtype``, ``head_dim``, ``rope_parameters``,
``layer_types``) and what earlier releases wrote (``torch_dtype``, top-level ``rope_theta``
and ``rope_scaling``). A field the config leaves out takes transformers' own default for that
architecture (5.24's config classes), so both read a checkpoint the same way. Whatever would
change the math and is not implemented here (an activation other than SiLU; rope types other
than default, linear and llama3, or a rope option such as ``partial_rotary_factor`` or
``attention_factor`` away from its neutral value) is a ``CheckpointError`` naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.checkpoint_error import CheckpointError
from engine.rope_config import RopeScaling, parse_rope

__all__ = ["CheckpointError", "ModelConfig", "RopeScaling", "SUPPORTED_ARCHITECTURES"]

LLAMA, MISTRAL, QWEN2 = "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
SUPPORTED_ARCHITECTURES = (LLAMA, MISTRAL, QWEN2)
# transformers' defaults for what config.json may leave out (None: num_attention_heads)
DEFAULTS: dict[str, dict[str, object]] = {
    LLAMA: {"num_key_value_heads": None, "max_position_embeddings": 2048, "bos_token_id": 1,
            "eos_token_id": 2},
    MISTRAL: {"num_key_value_heads": 8, "max_position_embeddings": 4096 * 32, "bos_token_id": 1,
              "eos_token_id": 2, "sliding_window": 4096},
    QWEN2: {"num_key_value_heads": 32, "max_position_embeddings": 32768, "bos_token_id": None,
            "eos_token_id": None, "sliding_window": 4096, "max_window_layers": 28},
}
DTYPES = ("float32", "bfloat16", "float16")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModelConfig:
    """``sliding_window``: the window some layer attends within (None: full attention only).
    The engine attends over full context, which equals the window only within it, so
    ``max_context`` stops there."""

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
        if self.torch_dtype not in DTYPES:
            raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")

    @staticmethod
    def from_dict(raw: dict) -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(f"unsupported architecture {archs or '(none given)'}; "
                                  f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        try:
            return ModelConfig._from_fields(arch, {**DEFAULTS[arch], **raw})
        except KeyError as e:
            raise CheckpointError(f"config.json lacks required field {e.args[0]!r}") from None

    @staticmethod
    def _from_fields(arch: str, raw: dict) -> ModelConfig:
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"hidden_act={raw['hidden_act']!r} is not implemented (only silu)")
        size = {k: _positive_int(raw, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                   "num_hidden_layers", "num_attention_heads",
                                                   "max_position_embeddings")}
        heads, layers = size["num_attention_heads"], size["num_hidden_layers"]
        theta, scaling = parse_rope(raw, size["max_position_embeddings"])
        llama_bias = arch == LLAMA and bool(raw.get("attention_bias", False))
        return ModelConfig(
            architecture=arch,
            vocab_size=size["vocab_size"],
            hidden_size=size["hidden_size"],
            intermediate_size=size["intermediate_size"],
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=heads if raw["num_key_value_heads"] is None else _positive_int(raw, "num_key_value_heads"),
            head_dim=size["hidden_size"] // heads if raw.get("head_dim") is None else _positive_int(raw, "head_dim"),
            rms_norm_eps=_number(raw, "rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=size["max_position_embeddings"],
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=arch == QWEN2 or llama_bias,
            o_bias=llama_bias,
            mlp_bias=arch == LLAMA and bool(raw.get("mlp_bias", False)),
            sliding_window=_sliding_window(arch, raw, layers),
            bos_token_id=raw["bos_token_id"],
            eos_token_ids=_token_ids("eos_token_id", raw["eos_token_id"]),
            torch_dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "float32"),
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

    @property
    def max_context(self) -> int:
        """The longest sequence this engine computes as the checkpoint defines it."""
        return min(self.max_position_embeddings, self.sliding_window or self.max_position_embeddings)


def _sliding_window(arch: str, raw: dict, num_layers: int) -> int | None:
    """The window as transformers applies it: Llama never; Mistral on every layer whenever
    sliding_window is set; Qwen2 only with use_sliding_window, on the layers ``layer_types``
    marks sliding (without it: layers from max_window_layers on)."""
    if arch == LLAMA:
        return None
    window = raw["sliding_window"]
    if arch == QWEN2:
        window = window if raw.get("use_sliding_window", False) else None
        start = _positive_int(raw, "max_window_layers") if raw["max_window_layers"] else 0
        types = raw.get("layer_types") or [LAYER_TYPES[window is not None and i >= start] for i in range(num_layers)]
        if len(types) != num_layers or not set(types) <= set(LAYER_TYPES):
            raise CheckpointError(f"layer_types must list {num_layers} of {', '.join(LAYER_TYPES)}, got {types!r}")
        window = window if "sliding_attention" in types else None
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise CheckpointError(f"sliding_window must be a positive integer or null, got {window!r}")
    return window


def _positive_int(raw: dict, key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{key} must be a positive integer, got {value!r}")
    return value


def _number(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{key} must be a number, got {value!r}")
    return float(value)


def _token_ids(field: str, value) -> tuple[int, ...]:
    ids = value if isinstance(value, list) else ([] if value is None else [value])
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{field} must be a token id or a list of them, got {value!r}")
    return tuple(ids)
