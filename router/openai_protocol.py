"""OpenAI-compatible request bodies, validated by pydantic, turned into engine requests.

Beyond OpenAI's fields they accept vLLM's top_k, min_tokens, ignore_eos, stop_token_ids,
cache_salt, return_token_ids and request_id (the openai client sends them through
``extra_body``), and segment reuse (docs/segment_reuse.md): ``segment_reuse`` options, a
completion's ``segments`` (token ranges), a chat message's ``cache_segment``. Unknown fields are
ignored; features that would change the output but are not implemented are refused. Also here:
the bodies of vLLM's /tokenize and /detokenize, and the lines of an OpenAI Batch file.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.segments.spec import MAX_SEGMENTS
from router.client_input import (
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_ROLE_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
)

DEFAULT_COMPLETION_MAX_TOKENS = 16
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class SegmentReuseOptions(BaseModel):
    """``segment_reuse``: how marked segments are reused (engine.segments.spec.SegmentReuse);
    ``auto`` (chat) makes every message a segment."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    auto: bool = False
    recompute_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    anchor_offsets: bool = True
    min_anchors: int = Field(default=1, ge=1, le=64)


class SamplingFields(BaseModel):
    """Fields both endpoints share. Floats must be finite; seeds must fit torch's 64 bits; strings
    are bounded (router/client_input.py)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Name
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = Field(default=None, ge=-2**63, lt=2**64)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_k: int = 0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    cache_salt: Name | None = None
    user: Name | None = None
    return_token_ids: bool | None = None   # vLLM's: the output's (and the prompt's) token ids in the response
    request_id: Annotated[str, Field(max_length=MAX_REQUEST_ID_CHARS)] | None = None  # when no X-Request-Id
    segment_reuse: SegmentReuseOptions | None = None

    def check_supported(self) -> None:
        """Refuse options this server does not implement, naming them."""
        if self.n not in (None, 1):
            raise InvalidRequestError(f"n must be 1 (one choice per request), got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise InvalidRequestError(f"{name} is not supported; leave it unset or 0")
        if self.logit_bias:
            raise InvalidRequestError("logit_bias is not supported")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true")

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k, top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed, stop=stop,
            stop_token_ids=tuple(self.stop_token_ids), ignore_eos=self.ignore_eos, logprobs=logprobs,
            min_tokens=self.min_tokens)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = DEFAULT_COMPLETION_MAX_TOKENS
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None
    segments: list[tuple[int, int]] | None = Field(default=None, max_length=MAX_SEGMENTS)  # token ranges

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise InvalidRequestError("echo is not supported")
        if self.best_of not in (None, 1):
            raise InvalidRequestError(f"best_of must be 1, got {self.best_of}")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported")

    def single_prompt(self) -> str | list[int]:
        """The one prompt: a string or token ids (a batch of exactly one is unwrapped)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise InvalidRequestError(f"batched prompts are not supported: send one prompt per request, "
                                          f"got {len(p)}")
            return p[0]
        return cast("str | list[int]", p)  # token ids, or an empty list

    def completion_sampling_params(self) -> SamplingParams:
        return self.sampling_params(DEFAULT_COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens,
                                    self.logprobs)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, Field(max_length=MAX_ROLE_CHARS)]
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Annotated[str, Field(max_length=MAX_ROLE_CHARS)]
    content: str | list[ContentPart] | None = None
    cache_segment: bool = False  # segment reuse: this message's content is a segment

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(p.type != "text" or p.text is None for p in self.content):
            raise InvalidRequestError("only text content parts are supported in messages")
        return "\n".join(cast(str, p.text) for p in self.content)  # checked just above


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true")

    def rendered_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    @property
    def segment_messages(self) -> list[bool]:
        """Which messages are segments: the marked ones, or all with ``segment_reuse.auto``."""
        auto = self.segment_reuse is not None and self.segment_reuse.auto
        return [auto or m.cache_segment for m in self.messages]

    def chat_sampling_params(self, prompt_len: int, max_model_len: int) -> SamplingParams:
        """Without a limit, generate until the context is full."""
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if limit is None:
            limit = max(1, max_model_len - prompt_len)
        return self.sampling_params(limit, (self.top_logprobs or 0) if self.logprobs else None)

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)


class TokenizeRequest(BaseModel):
    """POST /tokenize, vLLM's two shapes in one: ``prompt`` (text), or ``messages`` rendered with
    the chat template. ``add_special_tokens`` unset: for a prompt True, for messages the ids
    /v1/chat/completions would use (so ``count`` is its usage.prompt_tokens); set, the
    rendered text is encoded with it, as vLLM does."""

    model_config = ConfigDict(extra="ignore")

    model: Name | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False

    def check_supported(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of prompt or messages")
        if self.continue_final_message:
            raise InvalidRequestError("continue_final_message is not supported")

    @property
    def size(self) -> int:
        """Characters to tokenize (what decides whether a worker thread does it)."""
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) if isinstance(m.content, str) else sum(len(p.text or "") for p in m.content or ())
                   for m in self.messages or ())


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Name | None = None
    tokens: list[int]


class OpenAIBatchLine(BaseModel):
    """A line of an OpenAI Batch input file (OpenAI's Batch API, ``vllm run-batch``); ``body`` is
    validated as the request its ``url`` names."""

    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    method: Literal["POST"]
    url: Literal["/v1/completions", "/v1/chat/completions"]
    body: dict
