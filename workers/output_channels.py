"""A worker's side of the batched output streams (the dispatcher's side, and why batches:
cluster/output_channel.py): the deltas of every request one dispatcher sent this worker go
into that dispatcher's queue (``sink``) and leave as batches (``drain``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from engine.outputs import RequestOutput


class OutputChannels:
    """A worker's side: one queue of deltas per dispatcher channel.

    A channel whose reader goes away (its dispatcher closed it, or the stream was cancelled)
    aborts the requests still running on it, so nobody's KV blocks outlive their reader.
    """

    def __init__(self, abort: Callable[[str], None] | None = None) -> None:
        self.queues: dict[str, asyncio.Queue] = {}
        self.running: dict[str, set[str]] = {}  # channel -> requests not finished yet
        self.abort = abort

    def sink(self, channel: str, request_id: str | None = None) -> asyncio.Queue:
        """The channel's queue; ``request_id`` is a request whose deltas will go there."""
        if request_id is not None:
            self.running.setdefault(channel, set()).add(request_id)
        return self.queues.setdefault(channel, asyncio.Queue())

    async def drain(self, channel: str) -> AsyncIterator[list[RequestOutput]]:
        """Every delta put into ``channel``, as batches of whatever is queued; an engine failure
        ends the stream with an error after the deltas queued before it."""
        queue = self.sink(channel)
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                failure = next((x for x in items if isinstance(x, BaseException)), None)
                deltas = [x for x in items if not isinstance(x, BaseException)]
                running = self.running.get(channel, set())
                running.difference_update(d.request_id for d in deltas if d.finished)
                if deltas:
                    yield deltas
                if failure is not None:
                    raise RuntimeError(f"engine failed: {failure!r}") from failure
        finally:
            if self.queues.get(channel) is queue:
                del self.queues[channel]
            orphans = self.running.pop(channel, set())
            if self.abort is not None:
                for request_id in orphans:
                    self.abort(request_id)
