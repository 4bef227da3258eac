"""What the front ends need from whatever serves tokens: one engine in-process or a cluster.

The gRPC and HTTP servers only talk to a `GenerationBackend`. `LocalEngineBackend`
(router/local_backend.py) adapts the single-process AsyncLLMEngine; the cluster dispatcher
implements the same protocol over its prefill and decode pools.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse, SegmentStats


@dataclass(frozen=True)
class BackendStats:
    """A load snapshot; a backend reports zero for what it does not have.

    Prefix-cache figures count prompt tokens (looked up / found), like the engine's.
    """

    num_waiting: int = 0
    num_running: int = 0
    num_blocks_used: int = 0
    num_blocks_total: int = 0
    prefix_cache_query_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    handoff_bytes_total: int = 0
    num_preemptions: int = 0
    step_totals: dict = field(default_factory=dict)  # per step kind: steps, tokens, seconds per phase
    prefix_index_blocks: int = 0      # cluster: blocks the router's prefix index knows a holder of
    prefix_index_bytes: int = 0       # the index's memory
    prefix_index_predicted: int = 0   # (replica, block) pairs predicted, not yet confirmed by an event
    kv_event_blocks: int = 0          # blocks of KV events the router applied (a counter)
    segments: SegmentStats = field(default_factory=SegmentStats)  # segment reuse, over the engines
    segment_index_entries: int = 0    # cluster: segments the router knows a holder of


class HealthState(str, enum.Enum):
    """A replica's (or a dependency's) state: ready, degraded (slow or partly working:
    still used) or down (not used)."""

    READY = "ready"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class BackendHealth:
    """Replica states by pool, and the states of what the pools rely on (``components``,
    such as Redis: down there only degrades service).

    A pool is ready while one of its replicas is, degraded while one is degraded, else down.
    The backend is down (not serving) while any pool is down, ready when everything is
    ready, degraded otherwise.
    """

    pools: Mapping[str, Mapping[str, HealthState]]  # pool -> replica -> state
    components: Mapping[str, HealthState] = field(default_factory=dict)

    def pool_state(self, pool: str) -> HealthState:
        states = set(self.pools[pool].values())
        for state in (HealthState.READY, HealthState.DEGRADED):
            if state in states:
                return state
        return HealthState.DOWN

    @property
    def state(self) -> HealthState:
        pools = {self.pool_state(p) for p in self.pools}
        if not pools or HealthState.DOWN in pools:
            return HealthState.DOWN
        everything = {s for replicas in self.pools.values() for s in replicas.values()} | set(self.components.values())
        return HealthState.READY if everything == {HealthState.READY} else HealthState.DEGRADED

    @property
    def serving(self) -> bool:
        return self.state is not HealthState.DOWN

    def as_dict(self) -> dict:
        """The JSON body of /health: ``status`` ok / degraded / down, then the detail."""
        state = self.state
        return {"status": "ok" if state is HealthState.READY else state.value,
                "pools": {p: {"status": self.pool_state(p).value, "replicas": {r: s.value for r, s in rs.items()}}
                          for p, rs in self.pools.items()},
                "components": {c: s.value for c, s in self.components.items()}}


class Tokenizer(Protocol):
    """The tokenizer calls the front ends make (engine.tokenizer.Tokenizer has them).

    A checkpoint without tokenizer files gets engine.tokenizer.NoTokenizer: encode and
    apply_chat_template raise InvalidRequestError, decode returns "".
    """

    bos_token_id: int | None
    has_vocab: bool     # False for NoTokenizer
    @property
    def vocab_size(self) -> int:
        """The tokenizer's (read only where has_vocab)."""
        ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def token_string(self, token_id: int) -> str:
        """One token as logprobs show it: its text, or ``token_id:N`` without a vocabulary."""
        ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...


class GenerationBackend(Protocol):
    """Serves generation requests for one model."""

    model_name: str
    tokenizer: Tokenizer
    max_model_len: int

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 cache_salt: str | None, segments: SegmentReuse | None = None
                 ) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's deltas; the last has ``finished`` set. ``segments``: reuse
        those prompt segments' KV (docs/segment_reuse.md); the router passes it only when set.

        An async generator: it raises InvalidRequestError for bad input before its first
        delta. Closing it before the last delta must abort the request.
        """
        ...

    def abort(self, request_id: str) -> None:
        """Cancel a request and free its KV blocks; a no-op for unknown or finished ids."""
        ...

    def stats(self) -> BackendStats:
        """Current load. Called from worker threads (it may block briefly): must be thread-safe."""
        ...

    def health(self) -> BackendHealth:
        """Replica states by pool, at once (no remote calls: the backend keeps them fresh).
        Called from any thread."""
        ...
