"""The OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import time
import uuid

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import Request

from router.backend import Tokenizer
from router.errors import ErrorKind, RequestError
from router.generation import GenerationRequest, GenerationService
from router.http_errors import error_body
from router.openai_format import (ChatStreamFormatter, CompletionStreamFormatter, ResponseHeader, StreamFormatter,
                                  chat_response, completion_response)
from router.openai_protocol import ChatCompletionRequest, CompletionRequest
from router.openai_schema import ErrorResponse, ModelCard, ModelList
from router.prompts import chat_prompt_token_ids, prompt_token_ids
from router.sse import sse_stream, unless_disconnected

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OpenAIRoutes:
    """Endpoint handlers for one served model."""

    def __init__(self, service: GenerationService, model_name: str):
        self.service = service
        self.model_name = model_name
        self.created = int(time.time())

    @property
    def tokenizer(self) -> Tokenizer:
        return self.service.backend.tokenizer

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self._check_model(body.model)
        body.check_supported()
        ids = prompt_token_ids(self.tokenizer, body.single_prompt())
        job = GenerationRequest(f"cmpl-{uuid.uuid4().hex}", tuple(ids), body.completion_sampling_params(),
                                body.cache_salt)
        header = self._header(job, body.logprobs is not None, body.include_usage)
        if body.stream:
            return await self._stream(request, job, CompletionStreamFormatter(header, self.tokenizer))
        result = await unless_disconnected(request, self.service.run(job))
        return json_response(completion_response(header, result, self.tokenizer))

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check_model(body.model)
        body.check_supported()
        ids = chat_prompt_token_ids(self.tokenizer, body.rendered_messages())
        params = body.chat_sampling_params(len(ids), self.service.backend.max_model_len)
        job = GenerationRequest(f"chatcmpl-{uuid.uuid4().hex}", tuple(ids), params, body.cache_salt)
        header = self._header(job, body.wants_logprobs, body.include_usage)
        if body.stream:
            return await self._stream(request, job, ChatStreamFormatter(header, self.tokenizer))
        result = await unless_disconnected(request, self.service.run(job))
        return json_response(chat_response(header, result, self.tokenizer))

    async def list_models(self) -> Response:
        return json_response(ModelList(data=[self._card()]))

    async def get_model(self, model: str) -> Response:
        self._check_model(model)
        return json_response(self._card())

    async def _stream(self, request: Request, job: GenerationRequest, formatter: StreamFormatter) -> Response:
        deltas = self.service.stream(job)
        first = await unless_disconnected(request, anext(deltas))  # refusals still get an error status
        events = sse_stream(deltas, first, formatter, self._error_event)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    def _error_event(self, error: Exception) -> ErrorResponse:
        return error_body(error, self.service.metrics)

    def _header(self, job: GenerationRequest, logprobs: bool, include_usage: bool) -> ResponseHeader:
        return ResponseHeader(job.request_id, int(time.time()), self.model_name, logprobs, include_usage)

    def _card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=self.created, max_model_len=self.service.backend.max_model_len)

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise RequestError(ErrorKind.NOT_FOUND, f"model {model!r} does not exist; this server serves "
                                                    f"{self.model_name!r}")


def json_response(body: BaseModel) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"))
