"""Reading Hugging Face safetensors checkpoints into the engine's (fused) parameters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from engine.model_config import CheckpointError

# HF name fragment -> (our fused parameter fragment, shard index within it)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: from the shard index if present, else all of them."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid shard index: {e}") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard index names missing files {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors weight files")
    return files


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in checkpoint_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise CheckpointError(f"cannot read {file}: {e}") from None


def _target(name: str) -> tuple[str, int | None]:
    for hf, (ours, shard) in _FUSED.items():
        if f".{hf}." in name:
            return name.replace(hf, ours), shard
    return name, None


def load_weights(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]],
                 tied_embeddings: bool) -> None:
    """Copy checkpoint tensors into ``model``; every parameter must be filled exactly."""
    params = dict(model.named_parameters())
    filled: dict[str, set[int | None]] = {name: set() for name in params}
    for name, tensor in tensors:
        if name.endswith(_IGNORED_SUFFIXES) or (tied_embeddings and name == "lm_head.weight"):
            continue
        target, shard = _target(name)
        if target not in params:
            raise CheckpointError(f"unexpected tensor {name!r} in checkpoint")
        _copy_into(_destination(params[target], target, shard, model.config), tensor, name)
        filled[target].add(shard)
    missing = [n for n, got in filled.items() if len(got) < len(_fused_sizes(n, model.config))]
    if missing:
        raise CheckpointError(f"checkpoint lacks weights for {sorted(missing)[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}")


def _fused_sizes(param_name: str, cfg) -> list[int]:
    """Row sizes of the checkpoint tensors fused into one parameter ([1 entry] if not fused)."""
    if ".qkv_proj." in param_name:
        return [cfg.q_size, cfg.kv_size, cfg.kv_size]
    if ".gate_up_proj." in param_name:
        return [cfg.intermediate_size, cfg.intermediate_size]
    return [-1]


def _destination(param: torch.Tensor, name: str, shard: int | None, cfg) -> torch.Tensor:
    if shard is None:
        return param.data
    sizes = _fused_sizes(name, cfg)
    return param.data.narrow(0, sum(sizes[:shard]), sizes[shard])


def _copy_into(dest: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if tuple(dest.shape) != tuple(tensor.shape):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, "
                              f"the model expects {tuple(dest.shape)}")
    with torch.no_grad():
        dest.copy_(tensor)
