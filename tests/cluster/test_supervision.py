"""Supervision without a cluster: replica states from load pings, the private redis-server's
restarts and password, one log line per Redis outage in the KV event pump."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time

import pytest
import redis

from cluster.pool_handles import Pools, Replica
from engine.block_pool import BlockEvents
from kvstore.redis_client import redact_url
from kvstore.redis_server import RedisServer, with_password
from router.backend import HealthState
from workers.kv_event_pump import KVEventPump
from workers.messages import WorkerLoad

READY, DEGRADED, DOWN = HealthState.READY, HealthState.DEGRADED, HealthState.DOWN


class Method:
    def __init__(self, fn):
        self.remote = fn


class FakeActor:
    """``load`` answers with ``incarnation``, raises ``error``, or never answers (``hang``)."""

    def __init__(self, worker_id: str):
        self.worker_id, self.incarnation, self.error, self.hang = worker_id, "a", None, False
        self.load = Method(self._load)

    async def _load(self) -> WorkerLoad:
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error
        return WorkerLoad(self.worker_id, "decode", 0, 0, 10, 10, 0, 0, 0, 0, 0, incarnation=self.incarnation)


def test_replica_states_follow_load_pings(monkeypatch):
    import cluster.pool_handles as ph
    monkeypatch.setattr(ph, "PING_SLOW_S", 0.05)
    monkeypatch.setattr(ph, "PING_DOWN_S", 0.3)
    actor = FakeActor("decode-0")
    replica = Replica("decode-0", "decode", actor)
    restarted = []
    pools = Pools(decode=[replica], on_restart=restarted.append)

    async def run() -> None:
        await pools.refresh()
        assert (replica.state, replica.incarnation, replica.free_blocks) == (READY, "a", 10)
        actor.error = RuntimeError("The actor died unexpectedly\nTraceback ...")
        await pools.refresh()
        assert replica.state is DOWN and replica.load is None and replica.reason == \
            "RuntimeError: The actor died unexpectedly"
        actor.error, actor.incarnation = None, "b"  # Ray restarted it: a new process
        await pools.refresh()
        assert replica.state is READY and restarted == [replica]
        actor.hang = True  # hung: degraded after PING_SLOW_S, down after PING_DOWN_S
        await pools.refresh(wait_s=0.1)
        assert replica.state is DEGRADED
        await asyncio.sleep(0.3)
        await pools.refresh(wait_s=0)
        assert replica.state is DOWN and "hung" in replica.reason
        replica.ping.cancel()
    asyncio.run(run())


def test_private_redis_has_a_password_off_the_command_line_and_comes_back_when_killed(caplog):
    caplog.set_level(logging.WARNING, logger="kvstore.redis_server")
    server = RedisServer()
    url = server.start()
    try:
        assert server.password in url and server.password not in server.display_url
        cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
        assert server.password not in cmdline
        assert stat.S_IMODE(os.stat(server.config_path).st_mode) == 0o600
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).set("k", 1)
        client = redis.Redis.from_url(url)
        client.set("k", 1)
        old = server.proc.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (server.restarts == 0 or not server.alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.restarts == 1 and server.proc.pid != old
        assert client.ping() and client.get("k") is None  # reconnected, to an empty server
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == \
            [f"redis-server on port {server.port} exited", f"redis-server on port {server.port} is back"]
    finally:
        server.stop()
    assert not server.alive


def test_redis_urls_carry_the_password_and_print_without_it(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", "s3cr:t")
    assert with_password("redis://10.0.0.5:6379/0") == "redis://:s3cr%3At@10.0.0.5:6379/0"
    assert with_password("redis://:own@10.0.0.5:6379/0") == "redis://:own@10.0.0.5:6379/0"
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


class FakeKVPort:
    """An engine's KV port (engine/kv_port.py) with one batch of block events to drain."""

    def __init__(self):
        self.events = BlockEvents([(b"h1", b"root")], [])

    def drain_events(self) -> list[BlockEvents]:
        events, self.events = self.events, BlockEvents([], [])
        return [events] if events else []


class FlakyPublisher:
    def __init__(self):
        self.down, self.stored_batches = False, []

    def _check(self):
        if self.down:
            raise redis.ConnectionError("Connection refused")

    def stored(self, pairs):
        self._check()
        if pairs:
            self.stored_batches.append(list(pairs))

    def evicted(self, hashes):
        self._check()

    def cleared(self):
        self._check()


def test_kv_event_pump_logs_an_outage_once_and_publishes_what_waited(caplog):
    caplog.set_level(logging.WARNING, logger="workers.kv_event_pump")
    kv, publisher = FakeKVPort(), FlakyPublisher()
    pump = KVEventPump(kv, publisher, interval_s=0.005, max_backoff_s=0.02)
    publisher.down = True
    pump._thread.start()
    time.sleep(0.3)  # dozens of failed attempts
    assert pump.failing and len(pump.pending) == 1
    publisher.down = False
    deadline = time.monotonic() + 5
    while pump.failing and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    assert publisher.stored_batches == [[(b"h1", b"root")]]
    assert [r.getMessage().split(",")[0] for r in caplog.records] == \
        ["publishing KV events paused", "publishing KV events resumed (1 batches had waited)"]


def test_a_failed_call_is_unavailable_and_a_dead_replica_down():
    from ray.exceptions import ActorDiedError, RayTaskError

    from cluster.dispatcher import Dispatcher
    from cluster.output_channel import ReplicaFailed
    from engine.sampling_params import InvalidRequestError
    from kvstore.errors import HandoffError

    def from_actor(error: Exception) -> Exception:
        return RayTaskError("send_kv", "Traceback (most recent call last): ...", error).as_instanceof_cause()

    async def fails(error: Exception):
        raise error

    async def run() -> None:
        replica = Replica("prefill-0", "prefill", FakeActor("prefill-0"))
        for error in (from_actor(HandoffError("peer gone")), from_actor(redis.ConnectionError("refused"))):
            with pytest.raises(ReplicaFailed, match="prefill-0") as info:
                await Dispatcher._call(None, replica, fails(error))
            assert "Traceback" not in str(info.value) and replica.state is READY  # a peer's or Redis's fault
        with pytest.raises(InvalidRequestError):  # the request's own fault: as it is
            await Dispatcher._call(None, replica, fails(from_actor(InvalidRequestError("prompt too long"))))
        with pytest.raises(ReplicaFailed) as info:
            await Dispatcher._call(None, replica, fails(ActorDiedError()))
        assert replica.state is DOWN and info.value.retry_after_s == 5
    asyncio.run(run())
