"""Both ends of a pair in this process: a sender and a receiver, each with its own
PairGroups and KVHandoff (gloo, CPU), run side by side on threads. Faster than two
processes (tests/kvstore/handoff_peers.py) for tests that only need the protocol."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
import torch

from kvstore.config import TransportConfig
from kvstore.handoff import KVHandoff
from kvstore.keys import RedisKeys
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroups
from tests.kvstore.handoff_peers import RECEIVER, SENDER, caches

LAYOUT = KVLayout(num_layers=5, block_size=4, num_kv_heads=2, head_dim=8, dtype="bfloat16")
SECRET = "test-secret-" + "x" * 20


@dataclass(frozen=True)
class Ended:
    """How one call ended: its return value or the exception it raised, and when."""

    value: object
    seconds: float

    @property
    def error(self) -> str:
        assert isinstance(self.value, BaseException), f"expected an error, got {self.value!r}"
        return f"{type(self.value).__name__}: {self.value}"


def timed(call: Callable[[], object]) -> Ended:
    start = time.monotonic()
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 — the outcome under test
        value = exc
    return Ended(value, time.monotonic() - start)


def transport(timeout_s: float = 10.0, secret: str | None = SECRET) -> TransportConfig:
    return TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=timeout_s, rendezvous_timeout_s=10.0,
                           layers_per_chunk=2, secret=secret)


class LocalPair:
    """``SENDER`` and ``RECEIVER`` under a fresh key prefix; ``both`` runs one call per side."""

    def __init__(self, redis_url: str, sender: TransportConfig | None = None,
                 receiver: TransportConfig | None = None, prefix: str | None = None) -> None:
        self.prefix = prefix or f"t-{uuid.uuid4().hex[:8]}"
        self.redis = redis.Redis.from_url(redis_url)
        self.sender_config, self.receiver_config = sender or transport(), receiver or transport()
        keys = RedisKeys(self.prefix)
        self.sender_groups = PairGroups(SENDER, self.redis, keys, self.sender_config, "cpu")
        self.receiver_groups = PairGroups(RECEIVER, self.redis, keys, self.receiver_config, "cpu")
        self.sender = KVHandoff(self.sender_groups, self.sender_config)
        self.receiver = KVHandoff(self.receiver_groups, self.receiver_config)
        self._threads = ThreadPoolExecutor(4)

    def start(self, call: Callable[[], object]):
        """Run ``call`` on a thread; the future's result is an Ended."""
        return self._threads.submit(timed, call)

    def both(self, send: Callable[[], object], recv: Callable[[], object]) -> tuple[Ended, Ended]:
        sent, got = self.start(send), self.start(recv)
        return sent.result(timeout=60), got.result(timeout=60)

    def send(self, request_id: str, seed: int, blocks: int = 5) -> Callable[[], object]:
        src, src_ids, _ = caches(LAYOUT, seed, "cpu")
        return lambda: self.sender.send(src, src_ids[:blocks], RECEIVER, request_id)

    def recv(self, request_id: str, seed: int, blocks: int = 5) -> tuple[Callable[[], object], Callable[[], bool]]:
        """The receive call, and a check that it moved the sender's bytes for ``seed`` exactly."""
        src, src_ids, dst_ids = caches(LAYOUT, seed, "cpu")
        dst = torch.zeros_like(src)
        ids = dst_ids[:blocks]

        def exact() -> bool:
            return torch.equal(dst[:, :, ids].view(torch.uint8), src[:, :, src_ids[:blocks]].view(torch.uint8))
        return lambda: self.receiver.recv(dst, ids, SENDER, request_id), exact

    def exact(self, request_id: str, seed: int, blocks: int = 5) -> None:
        """One handoff that must succeed on both sides and move the bytes exactly."""
        recv, exact = self.recv(request_id, seed, blocks)
        sent, got = self.both(self.send(request_id, seed, blocks), recv)
        nbytes = blocks * LAYOUT.bytes_per_block
        assert (sent.value, got.value) == (nbytes, nbytes), (sent, got)
        assert exact()

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.sender_groups.close_all()
        self.receiver_groups.close_all()
        self.redis.close()


def sender_process(redis_url: str, prefix: str, config: TransportConfig, commands, replies) -> None:
    """A sender in its own process: sends (request id, seed) as told, reports each outcome."""
    client = redis.Redis.from_url(redis_url)
    handoff = KVHandoff(PairGroups(SENDER, client, RedisKeys(prefix), config, "cpu"), config)
    replies.put("ready")
    while (command := commands.get()) is not None:
        request_id, seed = command
        src, src_ids, _ = caches(LAYOUT, seed, "cpu")
        try:
            replies.put(handoff.send(src, src_ids[:5], RECEIVER, request_id))
        except Exception as exc:  # noqa: BLE001
            replies.put(f"{type(exc).__name__}: {exc}")
