"""What the front ends need from whatever serves tokens: one engine in-process or a cluster.

The gRPC and HTTP servers only talk to a `GenerationBackend`. `LocalEngineBackend`
(router/local_backend.py) adapts the single-process AsyncLLMEngine; the cluster dispatcher
implements the same protocol over its prefill and decode pools.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


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


class Tokenizer(Protocol):
    """The tokenizer calls the front ends make (engine.tokenizer.Tokenizer has them).

    A checkpoint without tokenizer files gets engine.tokenizer.NoTokenizer: encode and
    apply_chat_template raise InvalidRequestError, decode returns "".
    """

    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

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
                 cache_salt: str | None) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's deltas; the last has ``finished`` set.

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
