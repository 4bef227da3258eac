"""What the engine hands back after each step, per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    STOP = "stop"        # EOS, a stop token id or a stop string
    LENGTH = "length"    # max_tokens or max_model_len reached
    ABORT = "abort"      # cancelled by the caller


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class RequestOutput:
    """The delta one step produced for one request.

    ``new_token_ids`` are the tokens sampled this step (usually one), ``new_text`` the text
    they completed (stop strings already cut away). ``finished`` is set on the last delta.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0          # prompt tokens not computed: prefix-cache hits and reused segments
    num_reused_segment_tokens: int = 0  # of them, those filled from reused segments


@dataclass
class GenerationResult:
    """A finished request, assembled from its deltas."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_reused_segment_tokens: int = 0

    def add(self, delta: RequestOutput) -> None:
        self.token_ids += delta.new_token_ids
        self.text += delta.new_text
        self.logprobs += delta.new_logprobs
        self.num_cached_tokens = delta.num_cached_tokens
        self.num_reused_segment_tokens = delta.num_reused_segment_tokens
        if delta.finished:
            self.finish_reason = delta.finish_reason


@dataclass(frozen=True)
class Reservation:
    """Blocks a decode engine set aside for a prompt's KV: receive into ``block_ids``, which
    follow the ``num_cached_blocks`` leading blocks it already had cached."""

    block_ids: list[int]
    num_cached_blocks: int
