"""Engine outputs rendered as OpenAI completion and chat bodies, whole or as stream chunks.

With ``return_token_ids`` (vLLM's option) a choice carries its output's token ids (a chunk's:
its delta) and the response its prompt's (completions: in the choice; a stream: in its first
chunk), so clients of a checkpoint without a tokenizer get their output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from engine.outputs import FinishReason, GenerationResult, RequestOutput, TokenLogprob
from router.backend import Tokenizer
from router.openai_schema import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    Usage,
)


@dataclass(frozen=True)
class ResponseHeader:
    """What every body of one response repeats."""

    id: str
    created: int
    model: str
    logprobs: bool
    include_usage: bool = False
    token_ids: bool = False   # return_token_ids
    segments: bool = False    # segment reuse asked for: usage reports reused_segment_tokens


def reason_text(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


def completion_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """The completions format; text offsets count from ``offset`` in the generated text."""
    tokens = [tokenizer.token_string(lp.token_id) for lp in logprobs]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    top = [{tokenizer.token_string(t): v for t, v in lp.top} for lp in logprobs]
    return CompletionLogprobs(tokens=tokens, token_logprobs=[lp.logprob for lp in logprobs],
                              top_logprobs=top, text_offset=offsets)


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> ChatLogprobs:
    def entry(token_id: int, logprob: float) -> ChatTopLogprob:
        text = tokenizer.token_string(token_id)
        return ChatTopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))
    return ChatLogprobs(content=[ChatTokenLogprob(**entry(lp.token_id, lp.logprob).model_dump(),
                                                  top_logprobs=[entry(t, v) for t, v in lp.top])
                                 for lp in logprobs])


def result_usage(result: GenerationResult, segments: bool = False) -> Usage:
    return Usage.of(len(result.prompt_token_ids), len(result.token_ids), result.num_cached_tokens,
                    result.num_reused_segment_tokens if segments else None)


def completion_response(h: ResponseHeader, result: GenerationResult, tokenizer: Tokenizer) -> CompletionResponse:
    logprobs = completion_logprobs(tokenizer, result.logprobs, 0) if h.logprobs else None
    choice = CompletionChoice(text=result.text, logprobs=logprobs, finish_reason=reason_text(result.finish_reason))
    if h.token_ids:
        choice.token_ids, choice.prompt_token_ids = list(result.token_ids), list(result.prompt_token_ids)
    return CompletionResponse(id=h.id, created=h.created, model=h.model, choices=[choice],
                              usage=result_usage(result, h.segments))


def chat_response(h: ResponseHeader, result: GenerationResult, tokenizer: Tokenizer) -> ChatCompletionResponse:
    choice = ChatChoice(message=ChatMessageOut(content=result.text),
                        logprobs=chat_logprobs(tokenizer, result.logprobs) if h.logprobs else None,
                        finish_reason=reason_text(result.finish_reason),
                        token_ids=list(result.token_ids) if h.token_ids else None)
    return ChatCompletionResponse(id=h.id, created=h.created, model=h.model, choices=[choice],
                                  usage=result_usage(result, h.segments),
                                  prompt_token_ids=list(result.prompt_token_ids) if h.token_ids else None)


class StreamFormatter:
    """Turns a request's deltas into stream chunks; subclasses shape them per endpoint."""

    def __init__(self, header: ResponseHeader, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = ()):
        self.header = header
        self.tokenizer = tokenizer
        self.usage = Usage.of(0, 0, 0)
        self.unsent_prompt_ids: list[int] | None = list(prompt_token_ids) if header.token_ids else None

    def prompt_ids_once(self) -> list[int] | None:
        """The prompt's ids for the first chunk that asks (return_token_ids), then None."""
        ids, self.unsent_prompt_ids = self.unsent_prompt_ids, None
        return ids

    def delta_ids(self, delta: RequestOutput) -> list[int] | None:
        return list(delta.new_token_ids) if self.header.token_ids else None

    def opening(self) -> list[BaseModel]:
        return []

    def chunks(self, delta: RequestOutput) -> list[BaseModel]:
        self.usage = Usage.of(delta.num_prompt_tokens, self.usage.completion_tokens + len(delta.new_token_ids),
                              delta.num_cached_tokens,
                              delta.num_reused_segment_tokens if self.header.segments else None)
        return [self.chunk(delta)]

    def closing(self) -> list[BaseModel]:
        return [self.usage_chunk()] if self.header.include_usage else []

    def chunk(self, delta: RequestOutput) -> BaseModel:
        raise NotImplementedError

    def usage_chunk(self) -> BaseModel:
        raise NotImplementedError


class CompletionStreamFormatter(StreamFormatter):
    def __init__(self, header: ResponseHeader, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = ()):
        super().__init__(header, tokenizer, prompt_token_ids)
        self.text_offset = 0

    def chunk(self, delta: RequestOutput) -> BaseModel:
        h = self.header
        logprobs = completion_logprobs(self.tokenizer, delta.new_logprobs, self.text_offset) if h.logprobs else None
        if logprobs is not None:
            self.text_offset += sum(len(t) for t in logprobs.tokens)
        choice = CompletionChoice(text=delta.new_text, logprobs=logprobs,
                                  finish_reason=reason_text(delta.finish_reason) if delta.finished else None,
                                  token_ids=self.delta_ids(delta), prompt_token_ids=self.prompt_ids_once())
        return CompletionResponse(id=h.id, created=h.created, model=h.model, choices=[choice])

    def usage_chunk(self) -> BaseModel:
        h = self.header
        return CompletionResponse(id=h.id, created=h.created, model=h.model, choices=[], usage=self.usage)


class ChatStreamFormatter(StreamFormatter):
    def opening(self) -> list[BaseModel]:
        return [self._chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))],
                            prompt_token_ids=self.prompt_ids_once())]

    def chunk(self, delta: RequestOutput) -> BaseModel:
        logprobs = chat_logprobs(self.tokenizer, delta.new_logprobs) if self.header.logprobs else None
        return self._chunk([ChatChunkChoice(delta=ChatDelta(content=delta.new_text), logprobs=logprobs,
                                            finish_reason=reason_text(delta.finish_reason) if delta.finished
                                            else None, token_ids=self.delta_ids(delta))])

    def usage_chunk(self) -> BaseModel:
        return self._chunk([], self.usage)

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None,
               prompt_token_ids: list[int] | None = None) -> ChatCompletionChunk:
        h = self.header
        return ChatCompletionChunk(id=h.id, created=h.created, model=h.model, choices=choices, usage=usage,
                                   prompt_token_ids=prompt_token_ids)
