"""An asyncio front for the engine: a background thread steps it, callers stream deltas.

    engine = AsyncLLMEngine(LLMEngine(config))
    async for delta in engine.generate("r1", "Hello", SamplingParams(max_tokens=8)):
        ...

A caller that stops iterating (a cancelled task, a closed stream) aborts its request, so
its KV blocks are freed at once. ``submit`` instead sends a request's deltas into a queue
shared by many requests (a worker's batched output channel); each step hands every queue
its deltas in one wake-up of the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

T = TypeVar("T")


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def generate(self, request_id: str | None, prompt: str | list[int], params: SamplingParams,
                       cache_salt: str | None = None, hold_kv: bool = False) -> AsyncIterator[RequestOutput]:
        """Queue a request (InvalidRequestError at once for bad input) and stream its deltas."""
        def add(engine: LLMEngine) -> str:
            return engine.add_request(request_id, prompt, params, cache_salt, hold_kv=hold_kv)
        async for delta in self.stream(add):
            yield delta

    async def stream(self, start: Callable[[LLMEngine], str]) -> AsyncIterator[RequestOutput]:
        """Run ``start`` on the engine (it queues a request and returns its id), then stream
        that request's deltas; nothing is lost in between, both happen under the engine lock."""
        queue: asyncio.Queue = asyncio.Queue()
        rid = self.submit(start, queue)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine failed: {item!r}") from item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(rid)

    def submit(self, start: Callable[[LLMEngine], str], sink: asyncio.Queue) -> str:
        """Run ``start`` on the engine (it queues a request and returns its id) and send that
        request's deltas, and an engine failure, into ``sink``; call from ``sink``'s loop.
        Nobody aborts the request when its reader leaves: the owner of ``sink`` must."""
        with self._wake:
            if self._stopped:
                raise RuntimeError(f"engine is stopped: {self._error!r}")
            rid = start(self.engine)
            self._streams[rid] = (asyncio.get_running_loop(), sink)
            self._wake.notify()
        return rid

    def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run ``fn`` on the engine between steps (the engine is not thread-safe)."""
        with self._wake:
            result = fn(self.engine)
            self._wake.notify()
            return result

    def abort(self, request_id: str) -> None:
        """Cancel a request; its stream, if any, ends with a final ABORT delta."""
        with self._lock:
            target = self._streams.pop(request_id, None)
            final = self.engine.abort_request(request_id)
        if target is not None and final is not None:
            target[0].call_soon_threadsafe(target[1].put_nowait, final)

    def stats(self) -> EngineStats:
        return self.call(LLMEngine.stats)

    def shutdown(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopped and not self.engine.has_unfinished():
                        self._wake.wait()
                    if self._stopped:
                        return
                    deltas = self.engine.step()
                    by_queue: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue, list]] = {}
                    for d in deltas:
                        target = self._streams.get(d.request_id)
                        if target is not None:
                            by_queue.setdefault(id(target[1]), (*target, []))[2].append(d)
                        if d.finished:
                            self._streams.pop(d.request_id, None)
                for loop, queue, items in by_queue.values():  # one wake-up per queue per step
                    loop.call_soon_threadsafe(_put_all, queue, items)
        except BaseException as e:  # surface engine crashes to every waiting caller
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._stopped, self._error = True, error
            streams, self._streams = list(self._streams.values()), {}
        for loop, queue in {id(q): (l, q) for l, q in streams}.values():
            loop.call_soon_threadsafe(queue.put_nowait, error)


def _put_all(queue: asyncio.Queue, items: list) -> None:
    for item in items:
        queue.put_nowait(item)
