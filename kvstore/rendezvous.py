"""Rendezvous through Redis: one side of a pair publishes its store address, the other waits.

The address lives in a Redis list ``<p>:rdzv:<rank0>|<rank1>`` (with a TTL) so that the
waiting side can block on BLPOP instead of polling, whichever side arrives first.
"""

from __future__ import annotations

import redis

from kvstore.errors import RendezvousTimeoutError


def publish_address(client: redis.Redis, key: str, address: str, ttl_s: float) -> None:
    """Replace whatever address was left under ``key`` with ``address``."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.rpush(key, address)
    pipe.pexpire(key, max(1, int(ttl_s * 1000)))
    pipe.execute()


def wait_address(client: redis.Redis, key: str, timeout_s: float, peer: str) -> str:
    """Take the address ``peer`` published under ``key``; RendezvousTimeoutError if none comes."""
    got = client.blpop([key], timeout=timeout_s)
    if got is None:
        raise RendezvousTimeoutError(
            f"peer {peer!r} did not publish a pair-group address at Redis key {key!r} within "
            f"{timeout_s:g} s; is it running and asked to exchange KV with this worker?")
    return got[1].decode()


def withdraw_address(client: redis.Redis, key: str) -> None:
    """Remove a published address that no one will come for."""
    client.delete(key)
