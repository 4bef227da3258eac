"""The tierserve.v1.Generation servicer.

Its methods take the request's raw bytes: the caller is authenticated and rate-limited from
the call's metadata before the message is parsed (grpc has already bounded its size by the
server's max_receive_message_length). The request id a client sends is only echoed (in
responses and the ``x-request-id`` trailing metadata); the backend sees a router-made id,
so two clients using the same id never touch each other's requests. Errors carry a plain
message ending with the request id; unexpected ones only "internal error (request id X)",
their details in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError

from engine.sampling_params import InvalidRequestError
from router.client_input import check_request_id, new_request_id
from router.errors import ErrorKind, classify
from router.gate import Gate
from router.generation import GenerationRequest, GenerationService
from router.grpc_convert import chunk_to_proto, request_from_proto, response_to_proto
from router.prompts import PromptWork
from router.proto import tierserve_pb2 as pb

log = logging.getLogger(__name__)

STATUS_CODES = {ErrorKind.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
                ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
                ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
                ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
                ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
                ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL}
REQUEST_ID_KEY = "x-request-id"


class Call:
    """One call's ids: ``internal`` for the backend, ``echo`` for the client (its own, if it sent one)."""

    def __init__(self) -> None:
        self.internal = self.echo = new_request_id("grpc")


class GenerationServicer:
    def __init__(self, service: GenerationService, gate: Gate, prep: PromptWork):
        self.service = service
        self.gate = gate
        self.prep = prep

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Method handlers that hand the servicer the request's bytes, unparsed."""
        return {"Generate": grpc.unary_unary_rpc_method_handler(
                    self.Generate, response_serializer=pb.GenerateResponse.SerializeToString),
                "GenerateStream": grpc.unary_stream_rpc_method_handler(
                    self.GenerateStream, response_serializer=pb.GenerateChunk.SerializeToString)}

    async def Generate(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        call = Call()
        accepted = await self._accept(raw, context, call)
        try:
            response = response_to_proto(await self.service.run(accepted))
        except Exception as e:
            await self._fail(context, e, call)
        response.request_id = call.echo
        return response

    async def GenerateStream(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateChunk]:
        call = Call()
        accepted = await self._accept(raw, context, call)
        completion_tokens = 0
        try:
            async with aclosing(self.service.stream(accepted)) as deltas:
                async for delta in deltas:
                    completion_tokens += len(delta.new_token_ids)
                    chunk = chunk_to_proto(delta, completion_tokens)
                    chunk.request_id = call.echo
                    yield chunk
        except Exception as e:
            await self._fail(context, e, call)

    async def _accept(self, raw: bytes, context: grpc.aio.ServicerContext, call: Call) -> GenerationRequest:
        try:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            tenant = self.gate.admit(metadata.get("authorization"))
            message = await self.prep.run(len(raw), parse_request, raw)
            if message.request_id:
                call.echo = check_request_id(message.request_id)
            context.set_trailing_metadata(((REQUEST_ID_KEY, call.echo),))
            return await request_from_proto(message, self.prep, call.internal, tenant)
        except Exception as e:
            await self._fail(context, e, call)

    # grpc is untyped here (Any), so mypy cannot see that context.abort raises
    async def _fail(self, context: grpc.aio.ServicerContext, error: Exception, call: Call) -> NoReturn:  # type: ignore[misc]
        failure = classify(error, call.echo, call.internal)
        self.service.metrics.count_error(failure.kind)
        trailing = [(REQUEST_ID_KEY, call.echo)]
        if failure.retry_after_s is not None:
            trailing.append(("retry-after", str(max(1, math.ceil(failure.retry_after_s)))))
        message = str(failure)
        if call.echo not in message:  # grpc has no error body: the id goes in the details too
            message = f"{message} (request id {call.echo})"
        await context.abort(STATUS_CODES[failure.kind], message, trailing_metadata=tuple(trailing))


def parse_request(raw: bytes) -> pb.GenerateRequest:
    try:
        return pb.GenerateRequest.FromString(raw)
    except DecodeError:
        raise InvalidRequestError("the request is not a valid tierserve.v1.GenerateRequest "
                                  "(strings must be valid UTF-8)") from None
