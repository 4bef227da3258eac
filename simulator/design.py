"""A cluster design to simulate: which pools, on which hardware, how many replicas, engine limits."""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.errors import SimInputError
from simulator.hardware import Catalog

ROUTERS = ("round_robin", "least_loaded", "prefix_aware")
KV_ADMISSION = ("on_demand", "reserve_output")


@dataclass(frozen=True)
class PoolSpec:
    """``replicas`` engines of ``tp`` devices each (tensor parallel inside one node)."""

    hardware: str
    replicas: int
    tp: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.tp < 1:
            raise SimInputError(f"pool on {self.hardware}: replicas and tp must be >= 1")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < self.max_num_seqs:
            raise SimInputError(f"pool on {self.hardware}: max_num_seqs >= 1 and max_num_batched_tokens >= it")

    @property
    def devices(self) -> int:
        return self.replicas * self.tp

    def label(self) -> str:
        tp = f"(tp{self.tp})" if self.tp > 1 else ""
        return f"{self.replicas}x{self.hardware}{tp}"


@dataclass(frozen=True)
class Design:
    """colocated: one pool does both phases; disaggregated: prefill + decode; offload: prefill +
    decode whose attention runs on the attention pool (shared evenly by the decode replicas).
    shared_prefix_attention (with prefix_caching): decode-only steps attend prompt blocks that
    running sequences share once for all of them (Hydragen-style; see shared_prefix.py).
    paged_kv (colocated, with prefix_caching): a replica's prefix cache and its running requests
    share its KV memory in blocks, a cached block stored once however many requests use it (our
    engine's block pool); off, each request holds its whole context and the cache is as large as
    the whole KV memory besides.
    kv_admission: "on_demand" (the default): KV is allocated as tokens are made and the engines
    preempt (LIFO, recompute) when memory runs out, as real engines that do not know output
    lengths (with paged_kv: a prefill reserves its uncached prompt, cached blocks idle in the
    cache give way to running requests' growth, and a preempted request's prompt blocks stay
    cached for its recompute, as our engine); "reserve_output": prompt + output (the trace's) is
    reserved at admission and nothing is preempted."""

    colocated: PoolSpec | None = None
    prefill: PoolSpec | None = None
    decode: PoolSpec | None = None
    attention: PoolSpec | None = None
    router: str = "prefix_aware"
    prefix_caching: bool = True
    shared_prefix_attention: bool = True
    layerwise_transfer: bool = True
    micro_batches: int = 2
    paged_kv: bool = False
    kv_admission: str = "on_demand"

    def __post_init__(self) -> None:
        split = self.prefill is not None and self.decode is not None
        if (self.colocated is not None) == split or (self.prefill is None) != (self.decode is None):
            raise SimInputError("a design has a colocated pool, or prefill + decode pools (not both)")
        if self.attention is not None and not split:
            raise SimInputError("an attention pool needs prefill + decode pools")
        if self.router not in ROUTERS:
            raise SimInputError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.paged_kv and self.colocated is None:
            raise SimInputError("paged_kv is modeled for colocated pools only")
        if self.micro_batches < 1:
            raise SimInputError("micro_batches must be >= 1")
        if self.kv_admission not in KV_ADMISSION:
            raise SimInputError(f"kv_admission must be one of {KV_ADMISSION}, got {self.kv_admission!r}")

    @property
    def on_demand_kv(self) -> bool:
        return self.kv_admission == "on_demand"

    @property
    def kind(self) -> str:
        if self.colocated is not None:
            return "colocated"
        return "offload" if self.attention is not None else "disaggregated"

    def pools(self) -> dict[str, PoolSpec]:
        named = {"colocated": self.colocated, "prefill": self.prefill, "decode": self.decode,
                 "attention": self.attention}
        return {name: pool for name, pool in named.items() if pool is not None}

    def scaled(self, factor: int) -> Design:
        """Every pool ``factor`` times larger."""
        pools = {name: replace(pool, replicas=pool.replicas * factor) for name, pool in self.pools().items()}
        return replace(self, **pools)

    def cost_per_hour(self, catalog: Catalog) -> float:
        return sum(p.devices * catalog[p.hardware].usd_per_hour for p in self.pools().values())

    def peak_watts(self, catalog: Catalog) -> float:
        return sum(p.devices * catalog[p.hardware].watts for p in self.pools().values())

    def label(self) -> str:
        pools = self.pools()
        if self.kind == "colocated":
            return f"colocated {pools['colocated'].label()}"
        text = f"{pools['prefill'].label()} -> {pools['decode'].label()}"
        return text + (f" + attn {pools['attention'].label()}" if self.attention else "")
