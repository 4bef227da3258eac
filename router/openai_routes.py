"""The OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

A request's caller was authenticated and rate-limited by the edge (router/http_edge.py)
before its body was read; here the body is parsed and the prompt tokenized off the event
loop (router/prompts.py), the tenant's cache salt applied, and a router-made request id,
unique among all requests, is what the backend sees.
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import Request

from engine.sampling_params import SamplingParams
from router.auth import ANONYMOUS, Tenant
from router.backend import Tokenizer
from router.client_input import new_request_id, parse_body
from router.errors import ErrorKind, RequestError
from router.generation import GenerationRequest, GenerationService
from router.http_errors import error_body
from router.openai_format import (ChatStreamFormatter, CompletionStreamFormatter, ResponseHeader, StreamFormatter,
                                  chat_response, completion_response)
from router.openai_protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from router.openai_schema import ErrorResponse, ModelCard, ModelList
from router.prompts import PromptWork
from router.sse import sse_stream, unless_disconnected

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
        job = self._job(request, rid, ids, body.completion_sampling_params(), body)
        header = self._header(job, body.logprobs is not None, body.include_usage)
        if body.stream:
            return await self._stream(request, job, CompletionStreamFormatter(header, self.tokenizer))
        result = await unless_disconnected(request, self.service.run(job))
        return json_response(completion_response(header, result, self.tokenizer))

    async def chat_completions(self, request: Request) -> Response:
        rid = self._request_id(request, "chatcmpl")
        body = await self._body(request, ChatCompletionRequest)
        ids = await self.prep.chat(body.rendered_messages())
        params = body.chat_sampling_params(len(ids), self.service.backend.max_model_len)
        job = self._job(request, rid, ids, params, body)
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

    async def _body(self, request: Request, model: type[SamplingFields]) -> SamplingFields:
        raw = await request.body()  # the edge refuses bodies over the size limit as they arrive
        body = await self.prep.run(len(raw), parse_body, raw, model)
        self._check_model(body.model)
        body.check_supported()
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

    def _job(self, request: Request, rid: str, ids: list[int], params: SamplingParams, body: SamplingFields
             ) -> GenerationRequest:
        tenant: Tenant = request.scope["state"].get("tenant", ANONYMOUS)
        return GenerationRequest(rid, tuple(ids), params, tenant.cache_salt(body.cache_salt))

    async def _stream(self, request: Request, job: GenerationRequest, formatter: StreamFormatter) -> Response:
        deltas = self.service.stream(job)
        first = await unless_disconnected(request, anext(deltas))  # refusals still get an error status
        client_id = request.scope["state"]["request_id"]
        events = sse_stream(deltas, first, formatter, lambda error: self._error_event(error, client_id, job.request_id))
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    def _error_event(self, error: Exception, request_id: str, backend_id: str) -> ErrorResponse:
        return error_body(error, self.service.metrics, request_id, backend_id)[0]

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
