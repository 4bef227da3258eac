"""The asyncio front: concurrent streams equal the synchronous engine; cancellation frees KV."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.async_engine import AsyncLLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from tests.engine.conftest import make_engine

PARAMS = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture
def async_engine(tiny_model):
    engine = AsyncLLMEngine(make_engine(tiny_model))
    yield engine
    engine.shutdown()


async def collect(engine, prompt):
    tokens = []
    async for delta in engine.generate(None, prompt, PARAMS):
        tokens += delta.new_token_ids
    return tokens


def test_concurrent_streams_match_sync_engine(async_engine, tiny_model):
    prompts = [[0, 5 + i, 17, 300 - i] for i in range(16)]
    expected = [r.token_ids for r in make_engine(tiny_model).generate(prompts, PARAMS)]

    async def main():
        return await asyncio.gather(*(collect(async_engine, p) for p in prompts))
    assert asyncio.run(main()) == expected


def test_cancelled_stream_frees_blocks(async_engine):
    async def main():
        stream = async_engine.generate(None, [0, 1, 2, 3], SamplingParams(max_tokens=500, temperature=0,
                                                                        ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()
    asyncio.run(main())
    stats = async_engine.stats()
    assert stats.num_free_blocks == stats.num_blocks and stats.num_running == 0


def test_bad_request_raises_immediately(async_engine):
    async def main():
        async for _ in async_engine.generate(None, "", PARAMS):
            pass
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        asyncio.run(main())


def test_abort_from_outside_ends_the_stream(async_engine):
    async def main():
        deltas = []
        async for delta in async_engine.generate("long", [0, 1, 2, 3],
                                                 SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)):
            deltas.append(delta)
            if len(deltas) == 2:
                async_engine.abort("long")
        return deltas
    deltas = asyncio.run(main())
    assert deltas[-1].finished and deltas[-1].finish_reason.value == "abort"
    assert async_engine.stats().num_free_blocks == async_engine.stats().num_blocks


def test_stream_cancelled_while_its_request_is_added_leaves_nothing_behind(async_engine):
    """The caller leaves while the engine thread runs the command that adds its request (held KV
    included): the request is aborted once added, so no block stays taken."""
    inside, release = threading.Event(), threading.Event()

    def start(engine) -> str:
        rid = engine.add_request("slow-add", [0, 1, 2, 3, 4, 5], SamplingParams(max_tokens=1, temperature=0),
                                 hold_kv=True)
        inside.set()
        release.wait(10)
        return rid

    async def main():
        async def consume():
            async for _ in async_engine.stream(start):
                pass
        task = asyncio.create_task(consume())
        while not inside.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
    asyncio.run(main())
    stats = async_engine.stats()  # queued after the abort: it has run
    assert stats.num_free_blocks == stats.num_blocks and async_engine.call(lambda e: list(e.held)) == []


def test_shutdown_ends_open_streams(tiny_model):
    engine = AsyncLLMEngine(make_engine(tiny_model))

    async def main():
        deltas = []
        with pytest.raises(RuntimeError, match="engine is stopped"):
            async for delta in engine.generate("long", [0, 1, 2, 3], SamplingParams(max_tokens=10_000,
                                                                                   temperature=0, ignore_eos=True)):
                deltas.append(delta)
                if len(deltas) == 2:
                    await asyncio.to_thread(engine.shutdown)
        return deltas
    assert len(asyncio.run(asyncio.wait_for(main(), 60))) >= 2
