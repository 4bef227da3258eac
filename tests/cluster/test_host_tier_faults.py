"""Host-tier pull failures through the real prefill worker path (PrefillWorker.prefill told to
pull a prefix, HostPrefixCache.pull, HostTier on a real redis-server; no Ray): a block evicted
between the presence check and the read, a corrupt block (checksum mismatch), Redis hung
(one read timeout, then prompts skip the host tier a while) and gone.
Each prompt is computed instead: the first token is the engine's own, none of the pulled
blocks is used, every block is free again after the release, and the worker logs one line
when pulls stop working and one when they work again."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid

import pytest

from engine.async_engine import AsyncLLMEngine
from engine.sampling_params import SamplingParams
from kvstore.block_key import block_keys
from kvstore.config import KVStoreConfig
from kvstore.layout import KVLayout
from kvstore.redis_server import RedisServer
from kvstore.store import KVStore
from prefill_workers.host_prefix import HostPrefixCache, host_publisher
from prefill_workers.worker import PrefillWorker
from tests.engine.conftest import make_engine
from workers.messages import PrefillRequest

pytestmark = pytest.mark.redis
BLOCKS = 4
GREEDY = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


def prefix(case: int) -> list[int]:
    """Four full blocks (block size 16) no other case shares."""
    return [case + 1] + [(13 * i + 7 * case) % 450 + 30 for i in range(16 * BLOCKS - 1)]


class Side:
    """A prefill worker on its own engine (prefix caching on) writing to / pulling from the host tier."""

    def __init__(self, name: str, model, store: KVStore):
        self.engine = AsyncLLMEngine(make_engine(model, num_blocks=48, prefix_caching=True))
        publisher = host_publisher(store.redis, store.keys)
        self.host = HostPrefixCache(self.engine.kv_port, store.host, publisher, str(model))
        self.worker = PrefillWorker(name, self.engine, None, self.host)

    async def prefill(self, prompt: list[int], pull: int = 0):
        rid = uuid.uuid4().hex
        result = await self.worker.prefill(PrefillRequest(rid, prompt, GREEDY, None, pull))
        return rid, result

    async def write_through(self, prompt: list[int]) -> None:
        """Hold the prompt's KV, store its full blocks in the host tier, release it."""
        rid, _ = await self.prefill(prompt)
        held = await self.engine.acall(lambda e: e.held_kv(rid))
        await self.host.write_through(held.prompt_token_ids, "", held.block_ids, BLOCKS)
        self.worker.release(rid)

    async def all_free(self) -> bool:
        load = await self.worker.load()
        return load.free_blocks == load.total_blocks and load.held_handoffs == 0


@pytest.fixture(scope="module")
def tier(tiny_model):
    """A writer and a puller beside a redis-server nobody restarts, and the engine's reference."""
    server = RedisServer(supervise=False)
    url = server.start()
    store = KVStore.connect(KVStoreConfig(redis_url=url, key_prefix=f"t-{uuid.uuid4().hex[:8]}"))
    reference = make_engine(tiny_model)
    writer, puller = Side("prefill-0", tiny_model, store), Side("prefill-1", tiny_model, store)
    yield server, store, writer, puller, reference
    for side in (writer, puller):
        side.engine.shutdown()
    store.close()
    server.stop()


def first_token(reference, prompt: list[int]) -> int:
    return reference.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0].token_ids[0]


def payload_keys(store: KVStore, model, prompt: list[int], cache) -> list[str]:
    from engine.block_hash import hash_blocks
    keys = block_keys(hash_blocks(prompt[:16 * BLOCKS], 16, b""), str(model), KVLayout.of_cache(cache))
    return [store.keys.payload(str(k)) for k in keys]


def run_case(puller: Side, reference, prompt: list[int]):
    async def run():
        rid, result = await puller.prefill(prompt, pull=BLOCKS)
        puller.worker.release(rid)
        await asyncio.sleep(0.05)
        return result, await puller.all_free()
    result, free = asyncio.run(run())
    assert result.token_id == first_token(reference, prompt)
    assert free, "a block reserved for the pull or held for the handoff was not given back"
    return result


def pull_works(tier, case: int) -> None:
    """A prefix written through and pulled whole (also what makes a failing worker say pulls work again)."""
    _, store, writer, puller, reference = tier
    prompt = prefix(case) + [5, 6]
    asyncio.run(writer.write_through(prompt))
    pulled = puller.host.pulled_blocks
    result = run_case(puller, reference, prompt)
    assert result.num_cached_tokens == 16 * BLOCKS and puller.host.pulled_blocks == pulled + BLOCKS


def failing_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prefill_workers.worker"]


def test_a_block_evicted_between_the_check_and_the_read_is_computed(tier, tiny_model, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="prefill_workers.worker")
    pull_works(tier, 0)
    _, store, writer, puller, reference = tier
    prompt = prefix(1) + [5, 6]
    asyncio.run(writer.write_through(prompt))
    keys = payload_keys(store, tiny_model, prompt, puller.engine.engine.runner.kv_cache)
    assert all(store.redis.exists(k) for k in keys)
    contains = puller.host.host.contains

    def evicting(block_keys):
        present = contains(block_keys)
        store.redis.delete(keys[2])  # evicted right after the check: the read finds it gone
        return present
    monkeypatch.setattr(puller.host.host, "contains", evicting)
    pulled = puller.host.pulled_blocks
    result = run_case(puller, reference, prompt)
    monkeypatch.undo()
    assert result.num_cached_tokens == 0 and puller.host.pulled_blocks == pulled
    lines = failing_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("host-tier pulls failing (MissingBlocksError"), lines
    pull_works(tier, 4)
    assert failing_lines(caplog)[1:] == ["host-tier pulls work again"]


def test_a_corrupt_block_is_computed(tier, tiny_model, caplog):
    caplog.set_level(logging.WARNING, logger="prefill_workers.worker")
    _, store, writer, puller, reference = tier
    prompt = prefix(2) + [5, 6]
    asyncio.run(writer.write_through(prompt))
    key = payload_keys(store, tiny_model, prompt, puller.engine.engine.runner.kv_cache)[1]
    data = bytearray(store.redis.hget(key, "d"))
    data[len(data) // 2] ^= 0xFF
    store.redis.hset(key, "d", bytes(data))
    pulled = puller.host.pulled_blocks
    result = run_case(puller, reference, prompt)
    assert result.num_cached_tokens == 0 and puller.host.pulled_blocks == pulled
    lines = failing_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("host-tier pulls failing (ChecksumMismatchError"), lines
    pull_works(tier, 5)


def test_with_redis_hung_then_gone_prompts_are_computed(tier, caplog):
    caplog.set_level(logging.WARNING, logger="prefill_workers.worker")
    server, store, writer, puller, reference = tier
    prompt = prefix(3) + [5, 6]
    asyncio.run(writer.write_through(prompt))
    pulled = puller.host.pulled_blocks
    os.kill(server.proc.pid, signal.SIGSTOP)  # hung: the pull waits for the client's read timeout
    try:
        start = time.monotonic()
        first = run_case(puller, reference, prompt)
        hung = time.monotonic() - start
        start = time.monotonic()
        second = run_case(puller, reference, prefix(3) + [7, 8])
        skipped = time.monotonic() - start
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    print(f"\nfirst prompt {hung:.1f} s (waited for Redis), second {skipped:.2f} s (did not)")
    assert first.num_cached_tokens == 0 and puller.host.pulled_blocks == pulled
    assert second.num_cached_tokens == 16 * BLOCKS  # what the first computed, from the worker's own cache
    assert skipped < 2 < hung
    server.proc.kill()  # gone
    server.proc.wait(timeout=10)
    third = run_case(puller, reference, prefix(6) + [5, 6])
    assert third.num_cached_tokens == 0 and puller.host.pulled_blocks == pulled
    lines = failing_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("host-tier pulls failing (TimeoutError"), lines
