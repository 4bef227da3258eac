"""Typed messages between the router's dispatcher and the pools (pickled over Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import TokenLogprob
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse, SegmentStats


@dataclass(frozen=True)
class PrefillRequest:
    """``host_prefix_blocks``: leading blocks to pull from the Redis host tier first (their
    holder is busy, or gone), instead of computing them. ``segments``: reuse these prompt
    segments' KV where the replica's segment store holds it (docs/segment_reuse.md)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    host_prefix_blocks: int = 0
    segments: SegmentReuse | None = None


@dataclass(frozen=True)
class PrefillResult:
    """The first token, and where the prompt's KV waits for its handoff. ``num_cached_tokens``
    counts prompt tokens not computed (prefix hits and reused segments, ``num_reused_tokens``);
    the KV is exact for the first ``exact_tokens`` tokens only (None: all), see DecodeRequest."""

    request_id: str
    worker_id: str
    token_id: int
    logprob: TokenLogprob | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_kv_blocks: int
    generator_state: bytes | None
    num_reused_tokens: int = 0
    exact_tokens: int | None = None


@dataclass(frozen=True)
class DecodeRequest:
    """A request whose prompt KV comes from ``source_worker``; decoding continues after
    ``output_token_ids`` (the prefill's first token) with the sampler state carried over.
    ``exact_tokens``: the KV is exact for these leading tokens only (the prefill reused segments
    after other prefixes): the decode replica never offers later blocks to its prefix cache."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    params: SamplingParams
    source_worker: str
    generator_state: bytes | None = None
    cache_salt: str | None = None
    exact_tokens: int | None = None


@dataclass(frozen=True)
class WorkerLoad:
    worker_id: str
    role: str
    waiting: int
    running: int
    free_blocks: int
    total_blocks: int
    held_handoffs: int
    handoff_bytes: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    step_totals: dict = field(default_factory=dict)  # engine.step_profile totals, per step kind
    incarnation: str = ""  # new each time the replica's process (re)starts
    segments: SegmentStats = field(default_factory=SegmentStats)  # segment reuse counters


@dataclass(frozen=True)
class EngineInfo:
    """What the router must know about a replica's engine to validate requests."""

    worker_id: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    num_blocks: int
    block_size: int
    device: str
