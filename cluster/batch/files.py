"""Batch files in two formats, detected per file (its first line decides; every line must agree).

* prompts (ours): ``{"prompt": "..."}`` or ``{"prompt_token_ids": [...]}``, an optional ``id`` and
  sampling fields (max_tokens, temperature, top_p, top_k, seed, stop, ...). A result line is
  ``{"id", "token_ids", "text", "finish_reason", "num_prompt_tokens", "error"}``.
* OpenAI Batch (what OpenAI's Batch API and ``vllm run-batch`` read): ``{"custom_id", "method":
  "POST", "url": "/v1/completions" | "/v1/chat/completions", "body": {...}}``, the body as the HTTP
  server takes it. A result line is ``{"id", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error"}``: the body the HTTP server would answer (an OpenAI error body on failure), and
  ``error`` ``{"code", "message"}`` when the request failed, else null. ``body.model`` is not
  checked (a cluster serves one model); responses name the served model.

A malformed line (not JSON, unknown field, bad sampling value, a streamed body) refuses the
whole file with a BatchFileError naming the line; what only the model can check (a prompt too
long, a token id outside the vocabulary) is that line's error result.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from engine.outputs import GenerationResult
from engine.sampling_params import InvalidRequestError, SamplingParams
from router.backend import Tokenizer
from router.errors import RequestError
from router.http_errors import ERROR_TYPES, HTTP_STATUS
from router.openai_format import ResponseHeader, chat_response, completion_response
from router.openai_protocol import ChatCompletionRequest, CompletionRequest, OpenAIBatchLine
from router.openai_schema import BatchError, BatchRequestOutput, BatchResponseData, ErrorInfo, ErrorResponse
from router.prompts import chat_prompt_token_ids, check_length, prompt_token_ids

_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}
OPENAI_KEYS = {"custom_id", "method", "url", "body"}
M = TypeVar("M", bound=BaseModel)


class BatchFileError(ValueError):
    """A malformed input line; the message gives the line number."""


class BatchFormat(str, Enum):
    PROMPTS = "prompts"
    OPENAI = "openai"


@dataclass(frozen=True)
class BatchResult:
    """One prompts-format result."""

    id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None
    num_prompt_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class BatchRequest:
    """One prompts-format line."""

    id: str
    params: SamplingParams
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    id_prefix = "batch"

    def prepare(self, tokenizer: Tokenizer, max_model_len: int) -> tuple[list[int], SamplingParams]:
        prompt = self.prompt_token_ids if self.prompt_token_ids is not None else self.prompt
        if prompt is None:  # read_requests gives every line one of the two
            raise InvalidRequestError("give exactly one of 'prompt' or 'prompt_token_ids'")
        return prompt_token_ids(tokenizer, prompt), self.params

    def succeeded(self, result: GenerationResult, tokenizer: Tokenizer, model_name: str) -> BatchResult:
        reason = result.finish_reason.value if result.finish_reason else None
        return BatchResult(self.id, result.token_ids, result.text, reason, len(result.prompt_token_ids))

    def failed(self, error: RequestError, request_id: str) -> BatchResult:
        return BatchResult(self.id, [], "", None, error=str(error))


@dataclass(frozen=True)
class OpenAIBatchRequest:
    """One OpenAI Batch line; its body validated as the HTTP server validates it."""

    custom_id: str
    body: CompletionRequest | ChatCompletionRequest

    @property
    def id_prefix(self) -> str:
        return "chatcmpl" if isinstance(self.body, ChatCompletionRequest) else "cmpl"

    def prepare(self, tokenizer: Tokenizer, max_model_len: int) -> tuple[list[int], SamplingParams]:
        if isinstance(self.body, ChatCompletionRequest):
            ids = check_length(chat_prompt_token_ids(tokenizer, self.body.rendered_messages()), max_model_len)
            return ids, self.body.chat_sampling_params(len(ids), max_model_len)
        return check_length(prompt_token_ids(tokenizer, self.body.single_prompt()), max_model_len), \
            self.body.completion_sampling_params()

    def succeeded(self, result: GenerationResult, tokenizer: Tokenizer, model_name: str) -> BatchRequestOutput:
        chat = isinstance(self.body, ChatCompletionRequest)
        wants_logprobs = (self.body.wants_logprobs if isinstance(self.body, ChatCompletionRequest)
                          else self.body.logprobs is not None)
        header = ResponseHeader(result.request_id, int(time.time()), model_name, wants_logprobs,
                                token_ids=bool(self.body.return_token_ids))
        body = (chat_response if chat else completion_response)(header, result, tokenizer)
        return self._output(BatchResponseData(status_code=200, request_id=result.request_id, body=body), None)

    def failed(self, error: RequestError, request_id: str) -> BatchRequestOutput:
        info = ErrorInfo(message=str(error), type=ERROR_TYPES[error.kind], code=error.kind.value,
                         request_id=request_id)
        response = BatchResponseData(status_code=HTTP_STATUS[error.kind], request_id=request_id,
                                     body=ErrorResponse(error=info))
        return self._output(response, BatchError(code=error.kind.value, message=str(error)))

    def _output(self, response: BatchResponseData, error: BatchError | None) -> BatchRequestOutput:
        return BatchRequestOutput(id=f"batch_req_{uuid.uuid4().hex}", custom_id=self.custom_id, response=response,
                                  error=error)


AnyRequest = BatchRequest | OpenAIBatchRequest
AnyResult = BatchResult | BatchRequestOutput


def line_format(row: object) -> BatchFormat:
    return BatchFormat.OPENAI if isinstance(row, dict) and OPENAI_KEYS & row.keys() else BatchFormat.PROMPTS


def parse_request(line: str, number: int, defaults: dict, expected: BatchFormat | None = None) -> AnyRequest:
    """One line as a request; ``defaults`` fill sampling fields a line leaves out."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BatchFileError(f"line {number}: not JSON ({e})") from None
    found = line_format(row)
    if expected is not None and found is not expected:
        raise BatchFileError(f"line {number}: a line of the {found.value} format in a file of the "
                             f"{expected.value} format (its first line sets it)")
    if found is BatchFormat.OPENAI:
        return _openai_request(row, number, defaults)
    return _prompts_request(row, number, defaults)


def _prompts_request(row: object, number: int, defaults: dict) -> BatchRequest:
    if not isinstance(row, dict) or ("prompt" in row) == ("prompt_token_ids" in row):
        raise BatchFileError(f"line {number}: give exactly one of 'prompt' or 'prompt_token_ids'")
    unknown = set(row) - _SAMPLING_FIELDS - {"id", "prompt", "prompt_token_ids"}
    if unknown:
        raise BatchFileError(f"line {number}: unknown field {sorted(unknown)[0]!r}")
    if "prompt" in row and not isinstance(row["prompt"], str):
        raise BatchFileError(f"line {number}: 'prompt' must be a string, got {json.dumps(row['prompt'])[:40]}")
    ids = row.get("prompt_token_ids")
    if "prompt_token_ids" in row and not (
            isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)):
        raise BatchFileError(f"line {number}: 'prompt_token_ids' must be a list of integers, got "
                             f"{json.dumps(ids)[:40]}")
    try:
        params = SamplingParams(**{**defaults, **{k: v for k, v in row.items() if k in _SAMPLING_FIELDS}})
    except (InvalidRequestError, TypeError) as e:
        raise BatchFileError(f"line {number}: {e}") from None
    return BatchRequest(str(row.get("id", number)), params, row.get("prompt"),
                        tuple(ids) if ids is not None else None)


def _openai_request(row: dict, number: int, defaults: dict) -> OpenAIBatchRequest:
    line = _validated(OpenAIBatchLine, row, number)
    data = {**defaults, **line.body}
    body: CompletionRequest | ChatCompletionRequest = (
        _validated(ChatCompletionRequest, data, number, "body.") if line.url == "/v1/chat/completions"
        else _validated(CompletionRequest, data, number, "body."))
    try:
        body.check_supported()
        if body.stream:
            raise InvalidRequestError("stream is not supported in a batch")
        if isinstance(body, CompletionRequest):
            body.single_prompt()
            body.completion_sampling_params()
    except InvalidRequestError as e:
        raise BatchFileError(f"line {number}: body: {e}") from None
    return OpenAIBatchRequest(line.custom_id, body)


def _validated(model: type[M], data: dict, number: int, where: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        field = where + ".".join(str(p) for p in first["loc"])
        raise BatchFileError(f"line {number}: {field.rstrip('.')}: {first['msg']}") from None


def read_requests(path: str | Path, defaults: dict | None = None) -> list[AnyRequest]:
    """Every line of a batch file; its first line sets the format."""
    rows = [(i, line) for i, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    requests, expected = [], None
    for number, line in rows:
        request = parse_request(line, number, defaults or {}, expected)
        expected = expected or (BatchFormat.OPENAI if isinstance(request, OpenAIBatchRequest) else BatchFormat.PROMPTS)
        requests.append(request)
    _check_unique([r.custom_id for r in requests if isinstance(r, OpenAIBatchRequest)])
    return requests


def _check_unique(custom_ids: list[str]) -> None:
    seen: set[str] = set()
    for custom_id in custom_ids:
        if custom_id in seen:
            raise BatchFileError(f"custom_id {custom_id!r} appears twice; each request needs its own")
        seen.add(custom_id)


def result_line(result: AnyResult) -> dict:
    """A result as its output line (JSON-ready)."""
    return result.model_dump(mode="json") if isinstance(result, BatchRequestOutput) else asdict(result)


def parse_result_line(text: str) -> AnyResult:
    """The inverse of ``result_line`` (results a Ray job printed)."""
    row = json.loads(text)
    return BatchRequestOutput.model_validate(row) if "custom_id" in row else BatchResult(**row)


def write_results(path: str | Path, results: list[AnyResult]) -> None:
    Path(path).write_text("".join(json.dumps(result_line(r)) + "\n" for r in results))
