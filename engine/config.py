"""Engine configuration: layered frozen dataclasses, validated where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache.

    num_blocks: fixed block count; None sizes the cache from free device memory
    (``memory_fraction`` of it on CUDA) or from ``cpu_cache_bytes`` on CPU.
    """

    block_size: int = 16
    num_blocks: int | None = None
    memory_fraction: float = 0.85
    cpu_cache_bytes: int = 256 << 20
    enable_prefix_caching: bool = False

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ConfigError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits.

    max_num_batched_tokens caps the tokens one step runs (decode tokens plus prefill
    chunks); a prompt longer than the remaining budget is prefilled in chunks.
    max_model_len None means the model's max_position_embeddings. With prefix caching,
    admission looks at the first ``admission_window`` waiting requests and starts those with
    cached prefixes first, never passing over one that waited ``max_admission_delay_s``.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    admission_window: int = 64
    max_admission_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")


@dataclass(frozen=True)
class SegmentConfig:
    """The segment store (engine/segments/): reused segments' KV, kept per engine.

    store_bytes: its budget (least recently used segments go first); None: 256 MiB on the
    CPU, 2 GiB on CUDA (outside the KV cache, so leave room: ``memory_fraction``).
    max_anchors: observations kept per segment (each after another prefix).
    temperature: of the softmax that weighs anchors by their distance to the new context,
    relative to the mean distance (smaller: the nearest anchor takes more).
    """

    store_bytes: int | None = None
    max_anchors: int = 8
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.store_bytes is not None and self.store_bytes < 0:
            raise ConfigError(f"segments.store_bytes must be >= 0, got {self.store_bytes}")
        if self.max_anchors < 1:
            raise ConfigError(f"segments.max_anchors must be >= 1, got {self.max_anchors}")
        if not self.temperature > 0:
            raise ConfigError(f"segments.temperature must be > 0, got {self.temperature}")

    def budget(self, device: torch.device) -> int:
        if self.store_bytes is not None:
            return self.store_bytes
        return (2 << 30) if device.type == "cuda" else (256 << 20)


@dataclass(frozen=True)
class EngineConfig:
    """Everything one engine instance needs. ``dtype`` None takes the checkpoint's.

    detokenize False leaves text (and stop strings) to the caller: cluster workers stream
    token ids and the router detokenizes. load_format "dummy" fills the checkpoint's shapes
    with random weights instead of reading them (benchmarks of models one does not have).
    shared_prefix_attention: with prefix caching, decode steps whose sequences share cached
    blocks read each shared block once for all of them (Hydragen), when that saves reading at
    least shared_prefix_min_tokens tokens of K/V per layer. None picks by device: 256 on CPU;
    on CUDA 1M: shared steps reach CUDA graphs only once a batch has kept its plan for a few
    steps (engine/shared_step_graph.py), and eager, on an H100 with Llama-3-8B heads, they win
    only above about batch 256 x 4K shared tokens (BENCHMARKS.md).
    async_scheduling: queue each step on the device before reading the previous step's tokens
    back, so the host's scheduling, input building and output processing overlap the device's
    forward (engine/launched_step.py). Outputs are the same; a request that stops on a token
    (EOS, stop token or string) costs one spare row in the step after it, and ``step()``
    returns each step's deltas one call later. None: on for CUDA devices (where the device
    runs behind the host), off on the CPU (where nothing would overlap).
    """

    model: str
    dtype: str | None = None
    device: str = "cpu"
    attention_backend: str | None = None
    cuda_graphs: bool = True
    seed: int = 0
    detokenize: bool = True
    load_format: str = "safetensors"
    shared_prefix_attention: bool = True
    shared_prefix_min_tokens: int | None = None
    async_scheduling: bool | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)

    def __post_init__(self) -> None:
        if self.dtype is not None:
            parse_dtype(self.dtype)
        if self.load_format not in ("safetensors", "dummy"):
            raise ConfigError(f"load_format must be safetensors or dummy, got {self.load_format!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError as e:
            raise ConfigError(f"invalid device {self.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} requested but CUDA is not available")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
