"""Server-sent events for streamed responses, and cancelling work when the client leaves.

A streamed response is started only once the first delta is in, so a refused request
still gets an HTTP error status. While it streams, Starlette cancels the body iterator
when the client disconnects; `unless_disconnected` gives the same to the waits before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from engine.outputs import RequestOutput
from router.openai_format import StreamFormatter

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The HTTP client went away before its response was ready; the work was cancelled."""


def sse_event(body: BaseModel) -> str:
    return f"data: {body.model_dump_json()}\n\n"


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # a no-op if it is done; otherwise its clean-up aborts the request
        await asyncio.wait((task, watch))
    if task.cancelled():
        raise ClientDisconnected("client disconnected")
    return task.result()


async def sse_stream(deltas: AsyncGenerator[RequestOutput, None], first: RequestOutput,
                     formatter: StreamFormatter, error_body: Callable[[Exception], BaseModel]
                     ) -> AsyncIterator[str]:
    """Events for ``first`` and the remaining ``deltas``, an error event if one fails, then [DONE]."""
    async with aclosing(deltas):
        try:
            for body in formatter.opening() + formatter.chunks(first):
                yield sse_event(body)
            async for delta in deltas:
                for body in formatter.chunks(delta):
                    yield sse_event(body)
            for body in formatter.closing():
                yield sse_event(body)
        except Exception as e:
            yield sse_event(error_body(e))
        yield DONE
