"""A real Router on loopback (free ports) over a tiny-model engine, on its own loop thread.

Tests talk to it with synchronous or asyncio clients from the main thread, as a separate
process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from engine.async_engine import AsyncLLMEngine
from engine.outputs import GenerationResult
from engine.sampling_params import SamplingParams
from router.backend import BackendStats
from router.config import RouterConfig
from router.local_backend import LocalEngineBackend
from router.server import Router
from tests.engine.conftest import make_engine

T = TypeVar("T")
NUM_BLOCKS = 256
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


class RunningRouter:
    """A started Router and its backend, served from a background event-loop thread."""

    def __init__(self, model: Path, config: RouterConfig, **engine_options: Any):
        engine = make_engine(model, **{"num_blocks": NUM_BLOCKS, **engine_options})
        self.backend = LocalEngineBackend(AsyncLLMEngine(engine))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="router-loop", daemon=True)
        self.thread.start()
        self.router = Router(self.backend, config)
        self.call(self.router.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.router.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.router.http_port}"

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's current value from the router's registry (0 if absent)."""
        return self.router.metrics.registry.get_sample_value(name, labels) or 0.0

    def aborted(self) -> float:
        return self.sample("tierserve_requests_total", finish_reason="abort")

    def assert_aborted_and_freed(self, aborted_before: float, timeout: float = 60) -> None:
        """One more request was aborted (not run to its end) and every KV block is free again.

        The abort is counted by the request's own task as it unwinds, which may be just
        after the engine freed its blocks: wait (bounded) for both."""
        stats = self.wait_until_idle()
        assert (stats.num_blocks_used, stats.num_running, stats.num_waiting) == (0, 0, 0)
        deadline = time.monotonic() + timeout
        while self.aborted() < aborted_before + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.aborted() == aborted_before + 1

    @contextlib.contextmanager
    def engine_held(self) -> Iterator[None]:
        """Within it, once a step has produced a token the engine takes no more steps until the block
        ends: running requests stay running (holding their blocks) however long the test takes, so
        a test can cancel one, time one out or send a duplicate of one without racing its end.
        Commands (adding and aborting requests, stats) still run between the held engine's idle
        turns. For lockstep engines (the CPU default): an overlapped step in flight would not be
        read back while held."""
        engine = self.backend.engine.engine
        step, released, produced = engine.step, threading.Event(), [0]

        def held_step():
            if produced[0] and not released.is_set():
                released.wait(0.01)  # an idle turn: the engine's loop runs queued commands in between
                return []
            deltas = step()
            produced[0] += sum(len(d.new_token_ids) for d in deltas)
            return deltas
        engine.step = held_step
        try:
            yield
        finally:
            released.set()
            del engine.step  # the class's own again

    def wait_until_idle(self, timeout: float = 60) -> BackendStats:
        """Poll until no request holds blocks or is queued (bounded); return the last stats."""
        deadline = time.monotonic() + timeout
        stats = self.backend.stats()
        while (stats.num_blocks_used or stats.num_running or stats.num_waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = self.backend.stats()
        return stats

    def close(self) -> None:
        try:
            self.call(self.router.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()
            self.backend.shutdown()


def serve(model: Path, engine_options: dict[str, Any] | None = None, **config: Any) -> Iterator[RunningRouter]:
    """A RunningRouter on free ports for the module; ``config`` are RouterConfig fields."""
    running = RunningRouter(model, RouterConfig(grpc_port=0, http_port=0, **config), **(engine_options or {}))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def router(tiny_model) -> Iterator[RunningRouter]:
    yield from serve(tiny_model, request_timeout_s=None)


@pytest.fixture(scope="module")
def strict_router(tiny_model) -> Iterator[RunningRouter]:
    """API keys key-a and key-b (no request timeout: a call with a good key must succeed however slow)."""
    yield from serve(tiny_model, api_keys=("key-a", "key-b"), request_timeout_s=None)


@pytest.fixture(scope="module")
def timeout_router(tiny_model) -> Iterator[RunningRouter]:
    """A 0.5 s request timeout (tests hold its engine, so their requests surely outlast it)."""
    yield from serve(tiny_model, request_timeout_s=0.5)


@pytest.fixture(scope="module")
def client(router) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(router) -> str:
    return router.router.model_name


@pytest.fixture(scope="module")
def reference(tiny_model):
    """What the engine itself produces: ``reference(prompts, params) -> [GenerationResult]``."""
    engine = make_engine(tiny_model, num_blocks=NUM_BLOCKS)

    def generate(prompts: list[str | list[int]], params: SamplingParams = GREEDY) -> list[GenerationResult]:
        return engine.generate(prompts, params)
    return generate
