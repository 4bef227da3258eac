"""Conversions between tierserve.v1 messages and the engine's request and output types."""

from __future__ import annotations

import math
from typing import TypeVar

from engine.outputs import FinishReason, GenerationResult, RequestOutput, TokenLogprob
from engine.sampling_params import InvalidRequestError, SamplingParams
from router.auth import Tenant
from router.client_input import MAX_NAME_CHARS, MAX_STOP_CHARS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, check_text
from router.generation import GenerationRequest
from router.prompts import PromptWork
from router.proto import tierserve_pb2 as pb

T = TypeVar("T")

FINISH_REASONS = {None: pb.FINISH_REASON_UNSPECIFIED, FinishReason.STOP: pb.FINISH_REASON_STOP,
                  FinishReason.LENGTH: pb.FINISH_REASON_LENGTH, FinishReason.ABORT: pb.FINISH_REASON_ABORT}


async def request_from_proto(message: pb.GenerateRequest, prep: PromptWork, request_id: str,
                             tenant: Tenant) -> GenerationRequest:
    """Validate and tokenize (off the loop) a GenerateRequest; InvalidRequestError says what is wrong.

    ``request_id`` is the router's id for it; the message's own is only echoed back.
    """
    kind = message.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequestError("prompt is missing: set text or token_ids")
    check_text(message.cache_salt, "cache_salt", MAX_NAME_CHARS)
    params = sampling_from_proto(message.sampling)
    ids = await prep.prompt(message.text if kind == "text" else message.token_ids.ids)
    return GenerationRequest(request_id, tuple(ids), params, tenant.cache_salt(message.cache_salt or None))


def sampling_from_proto(p: pb.SamplingParams) -> SamplingParams:
    def given(name: str, default: T) -> T:
        return getattr(p, name) if p.HasField(name) else default
    for name in ("temperature", "top_p"):
        if not math.isfinite(getattr(p, name)):
            raise InvalidRequestError(f"{name} must be a finite number, got {getattr(p, name)}")
    if len(p.stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"sampling.stop: at most {MAX_STOP_STRINGS} strings, got {len(p.stop)}")
    for i, stop in enumerate(p.stop):
        check_text(stop, f"sampling.stop[{i}]", MAX_STOP_CHARS)
    if len(p.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequestError(f"sampling.stop_token_ids: at most {MAX_STOP_TOKEN_IDS}, got {len(p.stop_token_ids)}")
    return SamplingParams(
        max_tokens=given("max_tokens", SamplingParams.max_tokens),
        temperature=given("temperature", SamplingParams.temperature), top_k=p.top_k,
        top_p=given("top_p", SamplingParams.top_p), seed=given("seed", None), stop=tuple(p.stop),
        stop_token_ids=tuple(p.stop_token_ids), ignore_eos=p.ignore_eos, logprobs=given("logprobs", None),
        min_tokens=p.min_tokens)


def logprobs_to_proto(logprobs: list[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                            top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top]) for lp in logprobs]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached_tokens)


def response_to_proto(result: GenerationResult) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=result.request_id, token_ids=result.token_ids, text=result.text,
        finish_reason=FINISH_REASONS[result.finish_reason], logprobs=logprobs_to_proto(result.logprobs),
        usage=usage(len(result.prompt_token_ids), len(result.token_ids), result.num_cached_tokens))


def chunk_to_proto(delta: RequestOutput, completion_tokens: int) -> pb.GenerateChunk:
    """One stream chunk; the last carries the finish reason and the usage so far."""
    chunk = pb.GenerateChunk(request_id=delta.request_id, token_ids=delta.new_token_ids, text=delta.new_text,
                             logprobs=logprobs_to_proto(delta.new_logprobs),
                             finish_reason=FINISH_REASONS[delta.finish_reason if delta.finished else None])
    if delta.finished:
        chunk.usage.CopyFrom(usage(delta.num_prompt_tokens, completion_tokens, delta.num_cached_tokens))
    return chunk
