"""Rendezvous through Redis: one side of a pair publishes its store address, the other waits;
and the epoch that tells both sides whether the pair's group is still the live one.

``<p>:rdzv:<rank0>|<rank1>`` is a list holding rank 0's signed record (JSON: epoch, host,
port, nonce, proof) with a TTL, so that rank 1 can block on BLPOP instead of polling,
whichever side arrives first. ``<p>:pair:<rank0>|<rank1>`` holds the epoch of the group
that rank 0 last published. Either side that drops its group deletes the epoch if it is
still its own, and every transfer compares its group's epoch with it first, so a group
that one side dropped (timeout, broken backend, restarted process) is dropped by the
other side too at its next transfer, and the two form a new one together.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import cast

import redis

from kvstore.errors import PeerAuthError, RendezvousTimeoutError
from kvstore.keys import RedisKeys

_BLPOP_SLICE_S = 1.0
# delete KEYS[1] only while it still holds ARGV[1]
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# withdraw a record no one took: drop the list if it holds ARGV[1], and the epoch if it is ARGV[2]
_WITHDRAW = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 0
"""


@dataclass(frozen=True)
class Record:
    """What rank 0 publishes: the group's epoch, its store's address, its challenge, its proof."""

    epoch: str
    host: str
    port: int
    nonce: str
    proof: str

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        try:
            fields = json.loads(raw)
            return cls(str(fields["epoch"]), str(fields["host"]), int(fields["port"]), str(fields["nonce"]),
                       str(fields["proof"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerAuthError(f"unreadable rendezvous record {raw[:80]!r} (not published by a tierserve "
                                f"worker?): {exc}") from exc


@dataclass(frozen=True)
class PairKeys:
    """The two Redis keys of one pair (workers in rank order)."""

    rendezvous: str
    epoch: str

    @classmethod
    def of(cls, keys: RedisKeys, rank0: str, rank1: str) -> PairKeys:
        return cls(keys.rendezvous(rank0, rank1), keys.pair_epoch(rank0, rank1))


def current_epoch(client: redis.Redis, pair: PairKeys) -> str | None:
    raw = client.get(pair.epoch)
    return None if raw is None else cast(bytes, raw).decode()  # the client does not decode responses


def publish(client: redis.Redis, pair: PairKeys, record: Record, ttl_s: float) -> None:
    """Make ``record`` the pair's live epoch and the only record waiting to be taken."""
    pipe = client.pipeline(transaction=True)
    pipe.set(pair.epoch, record.epoch)
    pipe.delete(pair.rendezvous)
    pipe.rpush(pair.rendezvous, record.encode())
    pipe.pexpire(pair.rendezvous, max(1, int(ttl_s * 1000)))
    pipe.execute()


def take(client: redis.Redis, pair: PairKeys, timeout_s: float, peer: str) -> Record:
    """Take the record ``peer`` published; RendezvousTimeoutError if none comes.

    BLPOP waits in slices of at most a second: a longer one would outlast the client's
    socket timeout (redis-py's default is 5 s) and fail as a Redis error."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        got = client.blpop([pair.rendezvous], timeout=max(0.01, min(left, _BLPOP_SLICE_S)))
        if got is not None:
            return Record.decode(cast(bytes, got[1]))
    raise RendezvousTimeoutError(
        f"peer {peer!r} did not publish a pair-group address at Redis key {pair.rendezvous!r} within "
        f"{timeout_s:g} s; is it running and asked to exchange KV with this worker?")


def withdraw(client: redis.Redis, pair: PairKeys, record: Record) -> None:
    """Remove a published record no one came for, and its epoch."""
    client.eval(_WITHDRAW, 2, pair.rendezvous, pair.epoch, record.encode(), record.epoch)


def drop_epoch(client: redis.Redis, pair: PairKeys, epoch: str) -> None:
    """This side dropped the group of ``epoch``: the peer drops its half at its next transfer."""
    client.eval(_DELETE_IF, 1, pair.epoch, epoch)


def forget_worker(client: redis.Redis, keys: RedisKeys, worker_id: str) -> int:
    """A new process of ``worker_id`` holds no group: delete every pair epoch naming it, so
    peers still holding a group with its previous process drop it at their next transfer."""
    pairs = (name for name in client.scan_iter(match=keys.pair_epochs, count=1000))
    names = [name for name in pairs if worker_id in name.decode().rpartition(":")[2].split("|")]
    return client.delete(*names) if names else 0
