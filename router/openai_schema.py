"""OpenAI-compatible response bodies (completions, chat, models, errors, vLLM's tokenizer
endpoints) as pydantic models."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, model_serializer


class PromptTokensDetails(BaseModel):
    """``cached_tokens``: prompt tokens not computed (prefix-cache hits and reused segments);
    ``reused_segment_tokens``: of them, those from reused segments (only when the request asked
    for segment reuse)."""

    cached_tokens: int = 0
    reused_segment_tokens: int | None = None

    @model_serializer(mode="wrap")
    def _omit_unrequested(self, handler):
        data = handler(self)
        if data.get("reused_segment_tokens", 0) is None:
            del data["reused_segment_tokens"]
        return data


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
           reused_segment_tokens: int | None = None) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens,
                                                             reused_segment_tokens=reused_segment_tokens))


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class OmitsUnrequested(BaseModel):
    """Leaves out the vLLM extensions a client did not ask for (``return_token_ids``), so
    responses keep OpenAI's shape by default."""

    optional_fields: ClassVar[tuple[str, ...]] = ("token_ids", "prompt_token_ids")

    @model_serializer(mode="wrap")
    def _omit_unrequested(self, handler):
        data = handler(self)
        for name in self.optional_fields:
            if data.get(name, 0) is None:
                del data[name]
        return data


class CompletionChoice(OmitsUnrequested):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None          # return_token_ids: the output's ids (a chunk's: its delta)
    prompt_token_ids: list[int] | None = None   # return_token_ids: the prompt's (a stream's first chunk)


class CompletionResponse(BaseModel):
    """Both the whole response and a stream chunk (then ``usage`` is None)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(OmitsUnrequested):
    index: int = 0
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(OmitsUnrequested):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(OmitsUnrequested):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(OmitsUnrequested):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None   # return_token_ids: in the first chunk


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tierserve"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    """POST /tokenize (vLLM's shape); ``token_strs`` only with ``return_token_strs``."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionInfo(BaseModel):
    version: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class BatchResponseData(BaseModel):
    """An OpenAI Batch output line's ``response``: what the HTTP server would have answered."""

    status_code: int
    request_id: str
    body: CompletionResponse | ChatCompletionResponse | ErrorResponse | None = None


class BatchError(BaseModel):
    code: str
    message: str


class BatchRequestOutput(BaseModel):
    """One line of an OpenAI Batch output file; ``error`` is null for a request that succeeded."""

    id: str
    custom_id: str
    response: BatchResponseData | None
    error: BatchError | None = None
