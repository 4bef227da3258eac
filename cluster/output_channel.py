"""Batched output streams between workers and dispatchers: one Ray stream per (dispatcher,
replica) instead of one per request.

Streaming every token of every request as its own Ray object costs each token a round of
object-store bookkeeping in both processes; at a few thousand tokens per second per replica
that, not the GPU, sets the pace. Here a worker puts the deltas of all the requests one
dispatcher sent it into that dispatcher's queue (``OutputChannels.sink``, the worker's side:
workers/output_channels.py), and the dispatcher reads them as batches, each step's deltas in
one message (``drain``), and hands each delta to its request (``OutputDemux``, here).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Callable

import ray

from cluster.pool_handles import first_line
from router.errors import ServiceUnavailableError

log = logging.getLogger(__name__)


class ReplicaFailed(ServiceUnavailableError):
    """A replica failed a request (the actor died, its engine failed, a handoff with it broke)."""


class OutputDemux:
    """A dispatcher's side: one reader task per replica and event loop, feeding per-request queues."""

    def __init__(self, channel: str, on_failure: Callable[[str, str], None] | None = None):
        self.channel = channel
        self.on_failure = on_failure  # (worker id, reason) when a replica's stream breaks
        self.queues: dict[str, tuple[str, asyncio.Queue]] = {}  # request id -> (worker id, queue)
        self.readers: dict[tuple[str, str], tuple[asyncio.Task, object]] = {}  # (worker, channel) -> reader
        self._loop_channels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._loops = itertools.count()

    def open(self, request_id: str, replica) -> asyncio.Queue:
        """The queue a request's deltas (or a ReplicaFailed) will arrive in; starts the
        replica's reader on this loop if it is not running."""
        self._ensure_reader(replica)
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = (replica.worker_id, queue)
        return queue

    def close(self, request_id: str) -> None:
        self.queues.pop(request_id, None)

    def _ensure_reader(self, replica) -> None:
        key = (replica.worker_id, self.channel_for_loop())
        found = self.readers.get(key)
        if found is not None and not found[0].done():
            return
        stream = replica.actor.outputs.remote(key[1])
        self.readers[key] = (asyncio.get_running_loop().create_task(self._read(replica.worker_id, stream)), stream)

    def channel_for_loop(self) -> str:
        """The channel a worker should put this loop's requests' deltas into: one per event
        loop object (never reused, unlike ``id(loop)``), so a reader stranded on a stopped
        loop never shares a worker queue with, and steals deltas from, a live one."""
        loop = asyncio.get_running_loop()
        name = self._loop_channels.get(loop)
        if name is None:
            name = self._loop_channels[loop] = f"{self.channel}:{next(self._loops)}"
        return name

    async def _read(self, worker_id: str, stream) -> None:
        try:
            async for ref in stream:
                for delta in await ref:
                    target = self.queues.get(delta.request_id)
                    if target is not None:
                        target[1].put_nowait(delta)
            reason = "its output stream ended"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 — every request on the replica learns of it
            reason = first_line(e)
        log.warning("output stream of %s broke: %s", worker_id, reason)
        if self.on_failure is not None:
            self.on_failure(worker_id, reason)
        failure = ReplicaFailed(f"replica {worker_id} failed: {reason}")
        for owner, queue in list(self.queues.values()):
            if owner == worker_id:
                queue.put_nowait(failure)

    async def aclose(self) -> None:
        """Stop this loop's readers and their streams on the workers (which abort what still
        runs there); requests still waiting here end with ReplicaFailed."""
        channel = self.channel_for_loop()
        for key, (task, stream) in list(self.readers.items()):
            if key[1] != channel:
                continue
            task.cancel()
            try:
                ray.cancel(stream)
            except Exception:  # noqa: BLE001 — the actor may be gone already
                pass
            await asyncio.gather(task, return_exceptions=True)
            del self.readers[key]
            for owner, queue in list(self.queues.values()):
                if owner == key[0]:
                    queue.put_nowait(ReplicaFailed(f"the dispatcher closed its stream from {owner}"))
