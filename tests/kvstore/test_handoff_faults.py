"""Every KV handoff ends (done, rejected, cancelled, timed out) and the next one on the pair
succeeds, whatever one side did: odd request ids, a corrupt header, a sender or receiver
that fails before moving a block, a sender that gave up, a peer process that died."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import torch
import torch.multiprocessing as mp

from kvstore.errors import HandoffError, HandoffTimeoutError
from kvstore.handoff import _TAG_HEADER, KVHandoff
from kvstore.handoff_header import MESSAGE_BYTES, HandoffHeader
from kvstore.keys import RedisKeys
from tests.kvstore.handoff_peers import RECEIVER, SENDER, caches
from tests.kvstore.local_pair import LAYOUT, LocalPair, sender_process, timed, transport

pytestmark = pytest.mark.redis


@pytest.fixture
def pair(redis_url: str) -> Iterator[LocalPair]:
    ends = LocalPair(redis_url, sender=transport(timeout_s=3))
    yield ends
    ends.close()


def test_long_and_non_ascii_request_ids_hand_off(pair: LocalPair) -> None:
    shared = "req-" + "x" * 2000  # two ids alike in their first kilobytes
    for seed, request_id in enumerate(["r" * 1100, "é" * 300 + "🙂" * 200, "\ud800 lone surrogate",
                                       shared + "-a", shared + "-b"]):
        pair.exact(request_id, seed)
    recv, _ = pair.recv(shared + "-a", seed=9)
    sent, got = pair.both(pair.send(shared + "-b", seed=9), recv)
    assert isinstance(got.value, HandoffError) and isinstance(sent.value, HandoffError)
    assert "arrived where 'req-xxx" in got.error and "(#" in got.error  # told apart by digest
    pair.exact("after", seed=10)


def test_corrupt_header_ends_both_sides_and_the_next_handoff_succeeds(pair: LocalPair,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pair.exact("before", seed=1)
    garbage = torch.full((MESSAGE_BYTES,), 7, dtype=torch.uint8)
    monkeypatch.setattr(HandoffHeader, "to_tensor", lambda self, device: garbage.clone())
    recv, _ = pair.recv("corrupt", seed=2)
    sent, got = pair.both(pair.send("corrupt", seed=2), recv)
    monkeypatch.undo()
    assert got.error.startswith(f"HandoffError: unreadable handoff header from '{SENDER}' (group dropped)")
    assert isinstance(sent.value, HandoffError), sent  # at its timeout: nothing tells it sooner on gloo
    assert max(sent.seconds, got.seconds) < pair.sender_config.transfer_timeout_s + 2
    pair.exact("between", seed=3)

    def foreign_sender() -> None:  # garbage from a peer that does not notice, and keeps its group
        group = pair.sender_groups.get(RECEIVER)
        group.backend.send([garbage.clone()], group.peer_rank, _TAG_HEADER).wait()
    recv, _ = pair.recv("junk", seed=4)
    sent, got = pair.both(foreign_sender, recv)
    assert sent.value is None and got.error.startswith("HandoffError: unreadable handoff header")
    pair.exact("after", seed=5)  # no explicit re-formation: the dropped epoch tells the sender


def test_sender_that_fails_before_sending_cancels_and_the_pair_stays_usable(pair: LocalPair) -> None:
    src, _, _ = caches(LAYOUT, 1, "cpu")
    recv, _ = pair.recv("bad-ids", seed=1)
    sent, got = pair.both(lambda: pair.sender.send(src, [0, 999], RECEIVER, "bad-ids"), recv)
    assert sent.error.startswith("IndexError: block ids must lie in [0, 48)")
    assert got.error.startswith(f"HandoffError: '{SENDER}' cancelled the handoff of request 'bad-ids' before "
                                f"sending any block: IndexError: block ids must lie")
    assert got.seconds < 3  # at once, not at the 10 s timeout
    pair.exact("between", seed=2)
    recv, _ = pair.recv("other", seed=3)  # a cancel of a request nobody waits for is rejected
    sent, got = pair.both(lambda: pair.sender.send(src, [0, 999], RECEIVER, "bad-ids"), recv)
    assert sent.error.startswith("IndexError") and max(sent.seconds, got.seconds) < 5
    assert got.error == (f"HandoffError: rejected the handoff from '{SENDER}': request 'bad-ids' arrived where "
                         f"'other' was expected")
    pair.exact("after", seed=4)


def test_receiver_that_cannot_take_the_blocks_rejects_and_the_pair_stays_usable(pair: LocalPair) -> None:
    dst = torch.zeros((LAYOUT.num_layers, 2, 48, LAYOUT.block_size, LAYOUT.num_kv_heads, LAYOUT.head_dim),
                      dtype=torch.bfloat16)
    sent, got = pair.both(pair.send("r", seed=1, blocks=2), lambda: pair.receiver.recv(dst, [3, 3], SENDER, "r"))
    assert got.error == "ValueError: block ids must not repeat"
    assert sent.error == (f"HandoffError: '{RECEIVER}' rejected the handoff: receiver cannot take request 'r': "
                          f"ValueError: block ids must not repeat")
    assert sent.seconds < 3
    pair.exact("after", seed=2)


def test_a_receive_left_from_a_transfer_the_sender_gave_up_does_not_shift_later_ones(pair: LocalPair) -> None:
    pair.exact("first", seed=0)
    hasty = KVHandoff(pair.sender_groups, dataclasses.replace(pair.sender_config, transfer_timeout_s=1))
    src, src_ids, _ = caches(LAYOUT, 1, "cpu")
    gave_up = timed(lambda: hasty.send(src, src_ids[:5], RECEIVER, "late")).value
    assert isinstance(gave_up, HandoffTimeoutError)  # nobody received: the sender dropped the group
    late, _ = pair.recv("late", seed=1)
    left_over = pair.start(late)  # the receive arrives after its sender gave up
    rendezvous = RedisKeys(pair.prefix).rendezvous(RECEIVER, SENDER)
    deadline = time.monotonic() + 10
    while not pair.redis.exists(rendezvous) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the late receive holds the pair and is forming a new group
    recv, exact = pair.recv("next", seed=2)
    sent, got = pair.both(pair.send("next", seed=2), recv)
    assert sent.value == got.value == 5 * LAYOUT.bytes_per_block and exact(), (sent, got)
    assert left_over.result(timeout=30).error.startswith(
        f"HandoffError: out of step with '{SENDER}': request 'next' arrived where 'late' was expected")
    pair.exact("after", seed=3)


def test_a_live_pair_keeps_handing_off_while_redis_cannot_answer(pair: LocalPair,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pair.exact("before", seed=1)

    def unreachable(*args):
        raise redis.ConnectionError("Redis is down")
    monkeypatch.setattr("kvstore.pair_groups.current_epoch", unreachable)
    pair.exact("during", seed=2)


def test_a_dead_peer_ends_the_survivor_and_a_restarted_peer_hands_off_again(redis_url: str) -> None:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.kvstore.local_pair"])  # children fork from a process that imported torch
    pair = LocalPair(redis_url, receiver=transport(timeout_s=5))  # its receiver survives; senders are children
    proc = None

    def start_sender():
        commands, replies = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=sender_process, args=(redis_url, pair.prefix, transport(), commands, replies))
        proc.start()
        assert replies.get(timeout=60) == "ready"
        return proc, commands, replies

    def handoff(commands, replies, request_id: str, seed: int) -> None:
        recv, exact = pair.recv(request_id, seed)
        commands.put((request_id, seed))
        got = timed(recv)
        assert got.value == 5 * LAYOUT.bytes_per_block and exact(), got
        assert replies.get(timeout=30) == got.value

    try:
        proc, commands, replies = start_sender()
        handoff(commands, replies, "r1", seed=1)
        recv, _ = pair.recv("r2", seed=2)
        waiting = pair.start(recv)  # the receiver waits for a header that will never come
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        ended = waiting.result(timeout=30)
        assert isinstance(ended.value, HandoffError), ended
        assert time.monotonic() - killed < pair.receiver_config.transfer_timeout_s + 2

        proc, commands, replies = start_sender()  # same worker id, new process
        handoff(commands, replies, "r3", seed=3)

        os.kill(proc.pid, signal.SIGKILL)  # dies while the survivor is idle, holding a live group
        proc.join(timeout=10)
        proc, commands, replies = start_sender()
        handoff(commands, replies, "r4", seed=4)  # the survivor learns from the epoch, not from a failure
        commands.put(None)
        proc.join(timeout=30)
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
        pair.close()
