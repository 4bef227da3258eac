"""Model shapes: named presets (models.yaml) or a Hugging Face config.json."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import yaml

from simulator.errors import SimInputError
from simulator.files import read_json

PRESETS_FILE = Path(__file__).with_name("models.yaml")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelSpec:
    """The shape numbers the performance model needs (a dense decoder-only transformer)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False
    hf_name: str | None = None  # checkpoint name or path for cluster configs

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value < 1):
                raise SimInputError(f"model {self.name}: {f.name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise SimInputError(f"model {self.name}: num_heads {self.num_heads} is not a multiple of "
                                f"num_kv_heads {self.num_kv_heads}")

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def params_per_layer(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attention = h * (self.num_heads + 2 * self.num_kv_heads) * d + self.num_heads * d * h
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.params_per_layer + embeddings + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes


@cache
def presets() -> dict[str, dict]:
    return yaml.safe_load(PRESETS_FILE.read_text())


def load_model(name_or_path: str) -> ModelSpec:
    """A preset name (llama-3-8b, ...), a config.json path, or a checkpoint directory holding one."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        return from_hf_config(path)
    if name_or_path not in presets():
        raise SimInputError(f"unknown model {name_or_path!r}: give a preset ({', '.join(presets())}), "
                            "a config.json or a checkpoint directory")
    return ModelSpec(name=name_or_path, **presets()[name_or_path])


def from_hf_config(path: Path) -> ModelSpec:
    """Read the shape from a Hugging Face config.json (Llama, Mistral, Qwen2 style keys)."""
    cfg = read_json(path, "model config")
    if not isinstance(cfg, dict):
        raise SimInputError(f"model config {path}: the top level must be an object")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in cfg]
    if missing:
        raise SimInputError(f"{path}: missing {', '.join(missing)}")
    # transformers 5 writes ``dtype``, earlier releases ``torch_dtype`` (as engine.model_config reads them)
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    if dtype not in DTYPE_BYTES:
        raise SimInputError(f"{path}: dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    heads = cfg["num_attention_heads"]
    return ModelSpec(
        name=path.parent.name or str(path), hf_name=str(path.parent), num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"], dtype_bytes=DTYPE_BYTES[dtype],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
