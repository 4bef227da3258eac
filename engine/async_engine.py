"""An asyncio front for the engine: a background thread steps it, callers stream deltas.

    engine = AsyncLLMEngine(LLMEngine(config))
    async for delta in engine.generate("r1", "Hello", SamplingParams(max_tokens=8)):
        ...

A caller that stops iterating (a cancelled task, a closed stream) aborts its request, so
its KV blocks are freed at once. ``submit`` instead sends a request's deltas into a queue
shared by many requests (a worker's batched output channel); each step hands every queue
its deltas in one wake-up of the caller's loop.

Only the stepping thread touches the engine. Everything else (adding a request, an abort,
a stats query) is a command queued for it and run between two steps, so a caller never
holds a lock across a step: on a GPU the stepping thread would otherwise release the lock
and take it again within microseconds, and a caller could wait many steps for it (that
starved request admission to ~2 per second per replica).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import TypeVar

from engine.errors import EngineStopped
from engine.kv_port import KVPort
from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._wake = threading.Condition(threading.Lock())
        self._commands: collections.deque[tuple[Callable[[LLMEngine], object], Future]] = collections.deque()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # engine thread only
        self._stopped = False
        self._error: BaseException | None = None
        self.kv_port = KVPort(self)  # how workers hand KV in and out (engine/kv_port.py)
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def running(self) -> bool:
        """True while the stepping thread runs (False after a shutdown or a crash)."""
        return self._thread.is_alive() and not self._stopped

    async def generate(self, request_id: str | None, prompt: str | list[int], params: SamplingParams,
                       cache_salt: str | None = None, hold_kv: bool = False,
                       segments: SegmentReuse | None = None) -> AsyncGenerator[RequestOutput, None]:
        """Queue a request (InvalidRequestError at once for bad input) and stream its deltas."""
        def add(engine: LLMEngine) -> str:
            return engine.add_request(request_id, prompt, params, cache_salt, hold_kv=hold_kv, segments=segments)
        async with contextlib.aclosing(self.stream(add)) as deltas:  # closing us closes it, at once
            async for delta in deltas:
                yield delta

    async def stream(self, start: Callable[[LLMEngine], str]) -> AsyncGenerator[RequestOutput, None]:
        """Run ``start`` on the engine (it queues a request and returns its id), then stream
        that request's deltas; nothing is lost in between (the engine thread does both)."""
        queue: asyncio.Queue = asyncio.Queue()
        submitted = self.submit(start, queue)
        try:
            rid = await asyncio.shield(asyncio.wrap_future(submitted))
        except asyncio.CancelledError:  # the caller left before the id came back
            if not submitted.cancel():  # too late to drop the command: abort what it adds
                submitted.add_done_callback(self._abort_added)
            raise
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine failed: {item!r}") from item
                finished = item.finished
                yield item
        finally:
            if not finished:  # wait for it (the caller's loop may close right after), uncancellably
                try:
                    aborted = self._enqueue(self._aborter(rid))
                except EngineStopped:
                    aborted = None
                if aborted is not None:
                    await asyncio.shield(asyncio.wrap_future(aborted))

    def _abort_added(self, submitted: Future) -> None:
        if not submitted.cancelled() and submitted.exception() is None:
            self.abort(submitted.result())

    def submit(self, start: Callable[[LLMEngine], str], sink: asyncio.Queue) -> Future:
        """Queue ``start`` for the engine (it adds a request and returns its id; the future
        holds the id, or the error for bad input) and send that request's deltas, and an
        engine failure, into ``sink``; call from ``sink``'s loop. Nobody aborts the request
        when its reader leaves: the owner of ``sink`` must."""
        loop = asyncio.get_running_loop()

        def run(engine: LLMEngine) -> str:
            rid = start(engine)
            self._streams[rid] = (loop, sink)
            return rid
        return self._enqueue(run)

    async def asubmit(self, start: Callable[[LLMEngine], str], sink: asyncio.Queue) -> str:
        """``submit``, awaited: the request id, or InvalidRequestError for bad input."""
        return await asyncio.wrap_future(self.submit(start, sink))

    def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run ``fn`` on the engine between steps and wait for its result (up to one step;
        from a coroutine, ``acall`` waits without blocking the loop)."""
        if threading.current_thread() is self._thread:
            return fn(self.engine)
        return self._enqueue(fn).result()

    async def acall(self, fn: Callable[[LLMEngine], T]) -> T:
        return await asyncio.wrap_future(self._enqueue(fn))

    def abort(self, request_id: str) -> None:
        """Cancel a request (queued; runs before anything queued after it); its stream, if
        any, ends with a final ABORT delta. A no-op once the engine has stopped."""
        self.post(self._aborter(request_id))

    def _aborter(self, request_id: str) -> Callable[[LLMEngine], None]:
        def run(engine: LLMEngine) -> None:
            target = self._streams.pop(request_id, None)
            final = engine.abort_request(request_id)
            if target is not None and final is not None:
                _deliver(target[0], target[1], [final])
        return run

    def post(self, fn: Callable[[LLMEngine], object]) -> None:
        """Run ``fn`` on the engine between steps without waiting for it (in order with
        everything queued before and after); a no-op once the engine has stopped."""
        if threading.current_thread() is self._thread:
            fn(self.engine)
            return
        try:
            self._enqueue(fn).add_done_callback(_log_failure)
        except EngineStopped:
            pass

    def stats(self) -> EngineStats:
        return self.call(LLMEngine.stats)

    async def astats(self) -> EngineStats:
        return await self.acall(LLMEngine.stats)

    def shutdown(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _stopped_error(self) -> EngineStopped:
        return EngineStopped(f"engine is stopped: {self._error!r}" if self._error else "engine is stopped")

    def _enqueue(self, fn: Callable[[LLMEngine], T]) -> Future:
        future: Future = Future()
        with self._wake:
            if self._stopped:
                raise self._stopped_error()
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopped and not self._commands and not self.engine.has_unfinished():
                        self._wake.wait()
                    if self._stopped:
                        break
                    commands, self._commands = self._commands, collections.deque()
                for fn, future in commands:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn(self.engine))
                        except BaseException as e:  # noqa: BLE001 — the caller's error, not the engine's
                            future.set_exception(e)
                if not self.engine.has_unfinished():
                    continue
                deltas = self.engine.step()
                by_queue: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue, list]] = {}
                for d in deltas:
                    target = self._streams.get(d.request_id)
                    if target is not None:
                        by_queue.setdefault(id(target[1]), (*target, []))[2].append(d)
                    if d.finished:
                        self._streams.pop(d.request_id, None)
                for loop, queue, items in by_queue.values():  # one wake-up per queue per step
                    if not _deliver(loop, queue, items):  # its loop is gone: nobody reads these
                        for d in items:
                            if not d.finished:
                                self._aborter(d.request_id)(self.engine)
        except BaseException as e:  # surface engine crashes to every waiting caller
            self._fail(e)
        self._fail(None)

    def _fail(self, error: BaseException | None) -> None:
        """Stop taking commands; fail the queued ones and end every open stream (with the
        crash, or EngineStopped after a shutdown)."""
        with self._wake:
            self._stopped = True
            if error is not None:
                self._error = error
            commands, self._commands = self._commands, collections.deque()
        for _, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(self._stopped_error())
        streams, self._streams = list(self._streams.values()), {}
        for loop, queue in {id(q): (l, q) for l, q in streams}.values():
            _deliver(loop, queue, [error if error is not None else self._stopped_error()])


def _log_failure(future: Future) -> None:
    """Nobody waits for a posted command: its error goes to the log."""
    if not future.cancelled() and not isinstance(future.exception(), (type(None), EngineStopped)):
        log.error("engine command failed", exc_info=future.exception())


def _deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, items: list) -> bool:
    """Put ``items`` into ``queue`` on its loop; False if that loop is closed."""
    try:
        loop.call_soon_threadsafe(_put_all, queue, items)
        return True
    except RuntimeError:
        return False


def _put_all(queue: asyncio.Queue, items: list) -> None:
    for item in items:
        queue.put_nowait(item)
