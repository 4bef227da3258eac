"""A prefill's KV send ends when its receiver fails (prefill_workers/worker.py ``both_ends``):
the request gets the receiver's error at once instead of waiting out the send's transfer
timeout, the send gives up on its own thread and keeps its blocks until it has, and the pair
hands off again afterwards. Real gloo pair groups over loopback and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from kvstore.errors import KVStoreError
from kvstore.transport import HandoffTransport, Peer
from prefill_workers.worker import both_ends
from tests.kvstore.handoff_peers import RECEIVER, caches
from tests.kvstore.local_pair import LAYOUT, LocalPair, transport

pytestmark = pytest.mark.redis
TIMEOUT_S = 4.0


@pytest.fixture
def pair(redis_url: str) -> Iterator[LocalPair]:
    ends = LocalPair(redis_url, sender=transport(timeout_s=TIMEOUT_S), receiver=transport(timeout_s=TIMEOUT_S))
    ends.exact("first", seed=0)  # the pair's group exists
    yield ends
    ends.close()


def _sends(pair: LocalPair, request_id: str, seed: int) -> tuple[HandoffTransport, list[int]]:
    src, src_ids, _ = caches(LAYOUT, seed, "cpu")
    return HandoffTransport(pair.sender, src), list(src_ids[:5])


def test_a_failed_receive_ends_the_handoff_at_once(pair: LocalPair) -> None:
    sends, blocks = _sends(pair, "orphan", seed=1)

    async def failing_receive() -> int:
        await asyncio.sleep(0.3)
        raise KVStoreError("decode-0 could not take the blocks")

    async def run() -> tuple[float, bool, float]:
        sending = asyncio.ensure_future(sends.send(blocks, Peer(RECEIVER, "orphan")))
        started = time.monotonic()
        with pytest.raises(KVStoreError, match="could not take the blocks"):
            await both_ends(asyncio.ensure_future(failing_receive()), sending)
        failed_after, still_sending = time.monotonic() - started, not sending.done()
        await asyncio.gather(sending, return_exceptions=True)
        return failed_after, still_sending, time.monotonic() - started

    failed_after, still_sending, send_ended = asyncio.run(run())
    # the error came with the receiver's failure, not with the send's timeout; the send was still
    # on its thread then (gloo waits cannot be cut short), holding its blocks until it ended
    assert failed_after < 2 and still_sending and send_ended >= TIMEOUT_S - 1, (failed_after, send_ended)
    pair.exact("after", seed=2)


def test_both_ends_done_give_the_bytes_sent(pair: LocalPair) -> None:
    sends, blocks = _sends(pair, "whole", seed=3)
    recv, exact = pair.recv("whole", seed=3)

    async def run() -> int:
        received = asyncio.ensure_future(asyncio.to_thread(recv))
        return await both_ends(received, asyncio.ensure_future(sends.send(blocks, Peer(RECEIVER, "whole"))))

    assert asyncio.run(run()) == 5 * LAYOUT.bytes_per_block and exact()
