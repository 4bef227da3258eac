"""The cluster config file (YAML): model, pools with hardware tiers, kvstore, router.

    model: /models/Meta-Llama-3-8B
    dtype: bfloat16
    pools:
      prefill: {replicas: 2, hardware: {accelerator_type: H100, num_gpus: 1, num_cpus: 8}}
      decode:  {replicas: 4, hardware: {accelerator_type: L40S, num_gpus: 1}, engine: {max_num_seqs: 256}}
    kvstore: {redis_url: "redis://10.0.0.5:6379/0", host_tier_bytes: 8589934592}
    router: {grpc_port: 50051, http_port: 8000, api_keys_file: /etc/tierserve/api-keys, request_timeout_s: 120}

A config names either prefill + decode pools (disaggregated) or one colocated pool. An
``attention`` pool beside prefill + decode offloads the decode replicas' attention and KV cache
to it (docs/attention_offload.md): each decode replica becomes a model worker paired with one
attention replica (decode-i with attention-(i mod N); an attention replica's memory is split
among its decode replicas), its steps split into ``engine.micro_batches`` micro-batches.
Unknown fields are errors; a top-level ``plan`` mapping (the planner's predictions) is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import yaml

from cluster.schema import ConfigFileError, build
from kvstore.config import KVStoreConfig, TransportConfig, check_host_tier_codec, check_residual_tokens
from router.config import RouterConfig

ROLES = ("prefill", "decode", "colocated", "attention")
POLICIES = ("prefix-aware", "round-robin")
MAX_PREDICTED = 1 << 18  # (replica, block) predictions a router keeps (cluster.index.compact_index)


@dataclass(frozen=True)
class HardwareSpec:
    """Ray resources of one replica: where it may be placed."""

    num_gpus: float = 0.0
    num_cpus: float = 1.0
    accelerator_type: str | None = None
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("num_gpus and num_cpus must be >= 0")


@dataclass(frozen=True)
class EngineOverrides:
    """Per-pool engine limits and options (None keeps the engine's default)."""

    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    num_blocks: int | None = None
    memory_fraction: float | None = None
    enable_prefix_caching: bool = True
    async_scheduling: bool | None = None  # overlap host and device work (default: on for CUDA)
    micro_batches: int = 2  # decode pool with an attention pool: micro-batches per step (1..8)
    segment_store_bytes: int | None = None  # segment reuse's store (SegmentConfig.store_bytes; None: its default)

    def __post_init__(self) -> None:
        if not 1 <= self.micro_batches <= 8:
            raise ValueError(f"micro_batches must be in 1..8, got {self.micro_batches}")


@dataclass(frozen=True)
class PoolConfig:
    replicas: int = 1
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    engine: EngineOverrides = field(default_factory=EngineOverrides)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")


@dataclass(frozen=True)
class KVStoreSection:
    """redis_url None starts a local redis-server (local clusters only). Prefill replicas
    write shared prefixes through to the host tier (host_tier_writes); the router sends a
    prefix's request to another replica, which pulls the prefix from the host tier, when
    the holder is busier than the pull is worth (host_pull_weight: cost of pulling a token
    relative to computing it; 1 never pulls). host_tier_codec: how blocks are stored there,
    exact (default) or lossy kivi4 / kivi2 (KVStoreConfig.host_tier_codec, docs/kvstore.md).
    host_tier_bytes, host_tier_codec_residual_tokens and layers_per_chunk (layers per KV handoff
    message) are KVStoreConfig's and TransportConfig's knobs by the same names, with their defaults."""

    redis_url: str | None = None
    host_tier_bytes: int = KVStoreConfig.host_tier_bytes
    host_tier_writes: bool = True
    host_pull_weight: float = 0.5
    host_tier_codec: str = "exact"
    host_tier_codec_residual_tokens: int = KVStoreConfig.host_tier_codec_residual_tokens
    layers_per_chunk: int = TransportConfig.layers_per_chunk

    def __post_init__(self) -> None:
        check_host_tier_codec(self.host_tier_codec)
        check_residual_tokens(self.host_tier_codec_residual_tokens)
        if self.host_tier_bytes <= 0:
            raise ValueError("host_tier_bytes must be > 0")
        TransportConfig(layers_per_chunk=self.layers_per_chunk)  # its one check
        if not 0 <= self.host_pull_weight <= 1:
            raise ValueError(f"host_pull_weight must be in [0, 1], got {self.host_pull_weight}")


@dataclass(frozen=True)
class RouterSection(RouterConfig):
    """The router: RouterConfig's own fields by the same names, checked by RouterConfig (a
    bad one is ``router.<field>: ...``), plus the cluster's routing ``policy``: prefix-aware
    (cached prefix against load, the default) or round-robin. Secrets can stay out of the
    file (parse_cluster_config): ``api_keys_file`` (one KEY or NAME=KEY a line) adds to
    ``api_keys``, ``cache_salt_secret_file`` holds ``cache_salt_secret``. `tierserve serve`'s
    flags override these fields (cluster/serve_cli.py). ``max_predicted``: (replica, block)
    predictions the prefix index keeps until KV events confirm them (25-40 bytes each); past
    it the oldest expire early, which bounds a router that routes faster than events arrive."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("api_keys", "cache_salt_secret")  # never echoed in errors

    policy: str = "prefix-aware"
    max_predicted: int = MAX_PREDICTED

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.max_predicted < 0:
            raise ValueError(f"max_predicted must be >= 0, got {self.max_predicted}")
        super().__post_init__()

    def router_config(self) -> RouterConfig:
        """The router's own config: this section less ``policy`` and ``max_predicted``."""
        return RouterConfig(**{f.name: getattr(self, f.name) for f in fields(RouterConfig)})


@dataclass(frozen=True)
class ClusterConfig:
    """``name`` tells clusters sharing one Ray instance (and one Redis) apart."""

    model: str
    pools: dict[str, PoolConfig]
    name: str = "default"
    dtype: str | None = None
    load_format: str = "safetensors"
    block_size: int = 16
    max_model_len: int | None = None
    kvstore: KVStoreSection = field(default_factory=KVStoreSection)
    router: RouterSection = field(default_factory=RouterSection)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.name):
            raise ValueError(f"name must be lowercase letters, digits and '-', got {self.name!r}")
        unknown = sorted(set(self.pools) - set(ROLES))
        if unknown:
            raise ValueError(f"pools.{unknown[0]}: unknown pool (expected prefill, decode, colocated or attention)")
        if not (self.disaggregated or self.colocated):
            raise ValueError("pools must name prefill and decode, or colocated")
        if self.disaggregated and self.colocated:
            raise ValueError("pools: give prefill + decode or colocated, not both")
        if self.offloaded:
            self._check_offload()

    def _check_offload(self) -> None:
        if not self.disaggregated:
            raise ValueError("pools.attention: an attention pool needs prefill and decode pools")
        if self.pools["attention"].engine.micro_batches != EngineOverrides().micro_batches:
            raise ValueError("pools.attention.engine.micro_batches: set micro_batches on the decode pool")

    @property
    def disaggregated(self) -> bool:
        return "prefill" in self.pools and "decode" in self.pools

    @property
    def colocated(self) -> bool:
        return "colocated" in self.pools

    @property
    def offloaded(self) -> bool:
        return "attention" in self.pools


def load_cluster_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"cluster config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path} is not valid YAML: {e}") from None
    return parse_cluster_config(data)


def parse_cluster_config(data: dict) -> ClusterConfig:
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "plan"}
        if isinstance(data.get("router"), dict):
            data["router"] = _router_secrets(data["router"])
    return build(ClusterConfig, data, "")


def _router_secrets(router: dict) -> dict:
    """``api_keys_file`` and ``cache_salt_secret_file`` read into the fields they stand for."""
    router = dict(router)
    path = router.pop("api_keys_file", None)
    if path is not None:
        lines = _read_secret(path, "router.api_keys_file").splitlines()
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        listed = router.get("api_keys") or []
        if not isinstance(listed, list | tuple):
            raise ConfigFileError("router.api_keys must be a list")
        router["api_keys"] = [*listed, *entries]
    path = router.pop("cache_salt_secret_file", None)
    if path is not None:
        if "cache_salt_secret" in router:
            raise ConfigFileError("router: give cache_salt_secret or cache_salt_secret_file, not both")
        router["cache_salt_secret"] = _read_secret(path, "router.cache_salt_secret_file").strip()
    return router


def _read_secret(path: object, name: str) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigFileError(f"{name} must be a file path")
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{name}: cannot read {path!r}: {getattr(e, 'strerror', None) or e}") from None
