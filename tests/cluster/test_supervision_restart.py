"""A replica whose process lives but serves nothing is killed so that Ray restarts it, once per
incarnation: hung (no ping answered for PING_DOWN_S) or its engine thread dead (pings and
calls fail with EngineStopped). No Ray: the kill is recorded (tests/faults kills for real)."""

from __future__ import annotations

import asyncio
import logging

from ray.exceptions import RayTaskError

from cluster.cluster_view import ClusterView
from cluster.dispatcher import Dispatcher
from cluster.output_channel import ReplicaFailed
from cluster.pool_handles import Pools, Replica
from engine.errors import EngineStopped
from router.backend import HealthState
from tests.cluster.test_supervision import FakeActor


def dispatcher_over(*replicas: Replica) -> Dispatcher:
    view = ClusterView(Pools(decode=list(replicas)), 16, None)
    return Dispatcher(view, None, "m", 64, 512, (2,))


def engine_stopped() -> Exception:
    error = EngineStopped("engine is stopped: RuntimeError('CUDA error')")
    return RayTaskError("load", "Traceback (most recent call last): ...", error).as_instanceof_cause()


def test_a_hung_replica_is_killed_once_and_again_after_a_restart(monkeypatch, caplog):
    import cluster.pool_handles as ph
    caplog.set_level(logging.WARNING, logger="cluster.dispatcher")
    monkeypatch.setattr(ph, "PING_SLOW_S", 0.05)
    monkeypatch.setattr(ph, "PING_DOWN_S", 0.2)
    killed = []
    monkeypatch.setattr("cluster.dispatcher.ray.kill", lambda actor, no_restart: killed.append((actor, no_restart)))
    actor = FakeActor("decode-0")
    replica = Replica("decode-0", "decode", actor)
    dispatcher = dispatcher_over(replica)

    async def run() -> None:
        await dispatcher.pools.refresh()
        actor.hang = True
        for _ in range(3):  # hung: down, killed once however long it stays hung
            await dispatcher.pools.refresh(wait_s=0.15)
        assert replica.state is HealthState.DOWN and killed == [(actor, False)]
        replica.ping.cancel()
        await asyncio.sleep(0.05)  # the cancelled ping's callback clears it
        actor.hang, actor.incarnation = False, "b"  # Ray restarted it
        await dispatcher.pools.refresh()
        assert replica.state is HealthState.READY
        actor.hang = True  # the new process hangs too: killed again
        for _ in range(3):
            await dispatcher.pools.refresh(wait_s=0.15)
        assert killed == [(actor, False)] * 2
        replica.ping.cancel()
    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if "killing it" in r.getMessage()]
    assert lines == ["replica decode-0: killing it for Ray to restart (no answer to a load ping for 0 s (hung?))"] * 2


def test_a_replica_whose_engine_died_is_killed_from_a_ping_or_a_call(monkeypatch):
    killed = []
    monkeypatch.setattr("cluster.dispatcher.ray.kill", lambda actor, no_restart: killed.append(no_restart))
    actor = FakeActor("decode-0")
    replica = Replica("decode-0", "decode", actor)
    dispatcher = dispatcher_over(replica)

    async def fails():
        raise engine_stopped()

    async def run() -> None:
        await dispatcher.pools.refresh()
        actor.error = engine_stopped()
        await dispatcher.pools.refresh()
        assert replica.state is HealthState.DOWN and killed == [False]
        try:
            await dispatcher._call(replica, fails())
        except ReplicaFailed:
            pass
        assert killed == [False]  # the same incarnation: not twice
        actor.error = RuntimeError("The actor died unexpectedly")  # a dead process: Ray restarts it itself
        replica.incarnation = "b"
        await dispatcher.pools.refresh()
        assert killed == [False]
    asyncio.run(run())
