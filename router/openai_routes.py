"""The OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models, and
vLLM's /tokenize and /detokenize.

A request's caller was authenticated and rate-limited by the edge (router/http_edge.py)
before its body was read; here the body is parsed and the prompt tokenized off the event
loop (router/prompts.py), the tenant's cache salt applied, and a router-made request id,
unique among all requests, is what the backend sees. A client's own id (its X-Request-Id
header, else the body's ``request_id``) names the response as vLLM does (``cmpl-<id>``,
``chatcmpl-<id>``) and is echoed in the X-Request-Id header; it never reaches the backend,
so a reused id cannot touch another request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import Request

from engine.sampling_params import InvalidRequestError, SamplingParams
from router.auth import ANONYMOUS, Tenant
from router.backend import Tokenizer
from router.client_input import check_request_id, new_request_id, parse_body
from router.errors import ErrorKind, RequestError
from router.generation import GenerationRequest, GenerationService
from router.http_errors import error_body
from router.openai_format import (
    ChatStreamFormatter,
    CompletionStreamFormatter,
    ResponseHeader,
    StreamFormatter,
    chat_response,
    completion_response,
)
from router.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    SamplingFields,
    SegmentReuseOptions,
    TokenizeRequest,
)
from router.openai_schema import DetokenizeResponse, ErrorResponse, ModelCard, ModelList, TokenizeResponse
from router.prompts import PromptWork, chat_prompt_token_ids
from router.segments import message_spans, reuse_for
from router.sse import sse_stream, unless_disconnected

T = TypeVar("T", bound=BaseModel)  # a request body with a ``model`` field
S = TypeVar("S", bound=SamplingFields)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
NO_TOKENIZER = "this model was loaded without a tokenizer: /tokenize and /detokenize need one"


class OpenAIRoutes:
    """Endpoint handlers for one served model."""

    def __init__(self, service: GenerationService, prep: PromptWork, model_name: str):
        self.service = service
        self.prep = prep
        self.model_name = model_name
        self.created = int(time.time())

    @property
    def tokenizer(self) -> Tokenizer:
        return self.service.backend.tokenizer

    async def completions(self, request: Request) -> Response:
        rid = self._request_id(request, "cmpl")
        body = await self._body(request, CompletionRequest)
        ids = await self.prep.prompt(body.single_prompt())
        job = self._job(request, rid, ids, body.completion_sampling_params(), body, body.segments or ())
        header = self._header(request, "cmpl", job, body, body.logprobs is not None)
        if body.stream:
            formatter = CompletionStreamFormatter(header, self.tokenizer, job.prompt_token_ids)
            return await self._stream(request, job, formatter)
        result = await unless_disconnected(request, self.service.run(job))
        return json_response(completion_response(header, result, self.tokenizer))

    async def chat_completions(self, request: Request) -> Response:
        rid = self._request_id(request, "chatcmpl")
        body = await self._body(request, ChatCompletionRequest)
        messages = body.rendered_messages()
        ids = await self.prep.chat(messages)
        params = body.chat_sampling_params(len(ids), self.service.backend.max_model_len)
        spans: tuple[tuple[int, int], ...] = ()
        if any(body.segment_messages):
            spans = await self.prep.run(len(ids), message_spans, self.tokenizer, ids,
                                        [m["content"] for m in messages], body.segment_messages)
        job = self._job(request, rid, ids, params, body, spans)
        header = self._header(request, "chatcmpl", job, body, body.wants_logprobs)
        if body.stream:
            return await self._stream(request, job, ChatStreamFormatter(header, self.tokenizer, job.prompt_token_ids))
        result = await unless_disconnected(request, self.service.run(job))
        return json_response(chat_response(header, result, self.tokenizer))

    async def list_models(self) -> Response:
        return json_response(ModelList(data=[self._card()]))

    async def get_model(self, model: str) -> Response:
        self._check_model(model)
        return json_response(self._card())

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize: a prompt's, or chat messages', token ids (and their strings)."""
        body = await self._parse(request, TokenizeRequest)
        body.check_supported()
        ids = await self.prep.run(body.size, tokenize_ids, self.tokenizer, body)
        strs = [self.tokenizer.token_string(t) for t in ids] if body.return_token_strs else None
        return json_response(TokenizeResponse(count=len(ids), max_model_len=self.service.backend.max_model_len,
                                              tokens=ids, token_strs=strs))

    async def detokenize(self, request: Request) -> Response:
        """vLLM's /detokenize: token ids to text, special tokens kept (the inverse of /tokenize)."""
        body = await self._parse(request, DetokenizeRequest)
        text = await self.prep.run(len(body.tokens), detokenize_text, self.tokenizer, body.tokens)
        return json_response(DetokenizeResponse(prompt=text))

    async def _body(self, request: Request, model: type[S]) -> S:
        body = await self._parse(request, model)
        body.check_supported()
        return body

    async def _parse(self, request: Request, model: type[T]) -> T:
        raw = await request.body()  # the edge refuses bodies over the size limit as they arrive
        body = await self.prep.run(len(raw), parse_body, raw, model)
        if body.model is not None:
            self._check_model(body.model)
        return body

    def _request_id(self, request: Request, prefix: str) -> str:
        """A new id for the backend; it names the request to the client too unless the client
        sent its own x-request-id (echoed in the response header, never given to the backend)."""
        rid = new_request_id(prefix)
        state = request.scope["state"]
        state["backend_id"] = rid
        if not state.get("client_request_id"):
            state["request_id"] = rid
        return rid

    def _job(self, request: Request, rid: str, ids: list[int], params: SamplingParams, body: SamplingFields,
             spans: Sequence[tuple[int, int]] = ()) -> GenerationRequest:
        """The backend's request; ``spans``: its segments, reused with ``body.segment_reuse``."""
        tenant: Tenant = request.scope["state"].get("tenant", ANONYMOUS)
        options = body.segment_reuse or SegmentReuseOptions()
        segments = reuse_for(spans, options.recompute_ratio, options.anchor_offsets, options.min_anchors)
        return GenerationRequest(rid, tuple(ids), params, tenant.cache_salt(body.cache_salt), segments)

    async def _stream(self, request: Request, job: GenerationRequest, formatter: StreamFormatter) -> Response:
        deltas = self.service.stream(job)
        first = await unless_disconnected(request, anext(deltas))  # refusals still get an error status
        client_id = request.scope["state"]["request_id"]
        events = sse_stream(deltas, first, formatter, lambda error: self._error_event(error, client_id, job.request_id))
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    def _error_event(self, error: Exception, request_id: str, backend_id: str) -> ErrorResponse:
        return error_body(error, self.service.metrics, request_id, backend_id)[0]

    def _header(self, request: Request, prefix: str, job: GenerationRequest, body: SamplingFields, logprobs: bool
                ) -> ResponseHeader:
        return ResponseHeader(self._response_id(request, prefix, body, job.request_id), int(time.time()),
                              self.model_name, logprobs, body.include_usage, bool(body.return_token_ids),
                              segments=job.segments is not None or body.segment_reuse is not None)

    def _response_id(self, request: Request, prefix: str, body: SamplingFields, backend_id: str) -> str:
        """The response's id: ``{prefix}-{the client's id}`` when it gave one (X-Request-Id, else the
        body's request_id, which the X-Request-Id header then echoes), else the backend's id."""
        state = request.scope["state"]
        if not state.get("client_request_id") and body.request_id is not None:
            state["request_id"] = check_request_id(body.request_id)
            state["client_request_id"] = True
        return f"{prefix}-{state['request_id']}" if state.get("client_request_id") else backend_id

    def _card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=self.created, max_model_len=self.service.backend.max_model_len)

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise RequestError(ErrorKind.NOT_FOUND, f"model {model!r} does not exist; this server serves "
                                                    f"{self.model_name!r}")


def json_response(body: BaseModel) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"))


def tokenize_ids(tokenizer: Tokenizer, body: TokenizeRequest) -> list[int]:
    """What /tokenize counts. Messages with neither option set: the ids /v1/chat/completions sends."""
    if not tokenizer.has_vocab:
        raise InvalidRequestError(NO_TOKENIZER)
    if body.prompt is not None:
        return tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages or ()]
    if body.add_special_tokens is None and body.add_generation_prompt:
        return chat_prompt_token_ids(tokenizer, messages)
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    return tokenizer.encode(text, add_special_tokens=bool(body.add_special_tokens))


def detokenize_text(tokenizer: Tokenizer, tokens: list[int]) -> str:
    if not tokenizer.has_vocab:
        raise InvalidRequestError(NO_TOKENIZER)
    bad = next((t for t in tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"token id {bad} is outside the tokenizer's vocabulary [0, {tokenizer.vocab_size})")
    return tokenizer.decode(tokens, skip_special_tokens=False)
