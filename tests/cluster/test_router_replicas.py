"""Several routers on one cluster (issue 22): each follows the same KV event stream on a real
Redis, they choose alike, and a router that restarts starts from the latest snapshot and
the stream's tail, not from the whole history (which the stream's cap may have dropped)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid

import numpy as np
import pytest
import redis

from cluster.cluster_view import ClusterView
from cluster.index.index_follower import IndexFollower, stream_id
from cluster.index.prefix_index import ROOT_ID, PrefixIndex
from cluster.pool_handles import (
    IMBALANCE_RATIO,
    IMBALANCE_SLACK_REQUESTS,
    IMBALANCE_SLACK_TOKENS,
    Pools,
    Replica,
    RequestShape,
    pick_prefill,
)
from engine.block_hash import hash_blocks
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEvent, KVEventPublisher, KVEventSubscriber, block_ids

pytestmark = pytest.mark.redis
BLOCK = 16
WORKERS = [f"p{i}" for i in range(6)]


class RouterProcess:
    """tests/cluster/router_process.py in a child process."""

    def __init__(self, url: str, prefix: str, name: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.router_process", url, prefix, name, str(IMBALANCE_RATIO),
             str(IMBALANCE_SLACK_TOKENS), str(IMBALANCE_SLACK_REQUESTS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, cmd: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"router process exited ({self.proc.wait()})"
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Fleet:
    """Workers publishing their events, and the reference index fed every one of them."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, seed: int = 0):
        self.client, self.keys, self.rng = client, keys, random.Random(seed)
        self.publishers = {w: KVEventPublisher(client, keys, w) for w in WORKERS}
        self.reference = PrefixIndex()
        self.prefixes = [[self.rng.getrandbits(64) for _ in range(12)] for _ in range(5)]
        self.chains: list[list[int]] = []

    def chain(self) -> list[int]:
        prefix = self.rng.choice(self.prefixes)[:self.rng.randint(0, 12)]
        return prefix + [self.rng.getrandbits(64) for _ in range(self.rng.randint(1, 10))]

    def store(self, n: int) -> None:
        for _ in range(n):
            worker, chain = self.rng.choice(WORKERS), self.chain()
            self.chains.append(chain)
            self._publish(worker, "stored", list(zip(chain, [ROOT_ID] + chain[:-1])))

    def evict(self, n: int) -> None:
        for chain in self.rng.sample(self.chains, n):
            self._publish(self.rng.choice(WORKERS), "evicted", chain[self.rng.randint(0, len(chain) - 1):])

    def clear(self, worker: str) -> None:
        self._publish(worker, "cleared")

    def _publish(self, worker: str, kind: str, *args) -> None:
        before = self.last_id()
        getattr(self.publishers[worker], kind)(*args)
        entries = self.client.xrange(self.keys.kv_events, min=f"({before}" if before else "-")
        for _, fields in entries:  # the reference reads what the stream carries
            self.reference.apply(KVEvent.decode(fields[b"e"]))

    def last_id(self) -> str | None:
        last = self.client.xrevrange(self.keys.kv_events, count=1)
        return last[0][0].decode() if last else None

    def asks(self, n: int = 40) -> list[list[int]]:
        return [self.rng.choice(self.chains)[:self.rng.randint(1, 22)] + [self.rng.getrandbits(64)] for _ in range(n)]

    def expected(self, asks, loads, inflight) -> tuple[list[int], list[dict]]:
        """The dispatcher's own rule over the reference index: what every router must choose."""
        replicas = [Replica(w, "prefill", None, inflight=f, pending_tokens=p)
                    for w, p, f in zip(WORKERS, loads, inflight)]
        choices, matches = [], []
        for ask in asks:
            matched = self.reference.matched_blocks(ask)
            shape = RequestShape(len(ask) * BLOCK, BLOCK, matched)
            choices.append(WORKERS.index(pick_prefill(replicas, shape).worker_id))
            matches.append(matched)
        return choices, matches


def test_routers_agree_and_a_restarted_one_starts_from_the_snapshot(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(f"t-{uuid.uuid4().hex[:10]}")
    fleet = Fleet(client, keys)
    fleet.store(60)
    fleet.evict(10)
    routers = {name: RouterProcess(redis_url, keys.prefix, name) for name in ("a", "b")}
    try:
        for r in routers.values():
            assert r.call("restore") == {"restored": None}, "no snapshot yet: from the stream's start"
        last = fleet.last_id()
        synced = {name: r.call("sync", until=last) for name, r in routers.items()}
        assert synced["a"] == synced["b"] and synced["a"]["indexed"] == sum(1 for n in fleet.reference.nodes.values()
                                                                            if n.holders)
        loads, inflight = [0, 9000, 300, 300, 12000, 0], [1, 3, 0, 0, 2, 1]  # balanced: cache affinity decides
        asks = fleet.asks()
        ask = {"replicas": WORKERS, "loads": loads, "inflight": inflight, "prompts": asks, "block_size": BLOCK}
        choices, matches = fleet.expected(asks, loads, inflight)
        for r in routers.values():
            answer = r.call("route", **ask)
            assert answer["choices"] == choices and answer["matches"] == matches
        assert len(set(choices)) > 1 and sum(bool(m) for m in matches) > len(asks) // 2

        written = [r.call("snapshot")["written"] for r in routers.values()]
        assert written == [True, False], "one router at a time writes snapshots (the lease holder)"
        routers.pop("b").kill()

        fleet.store(30)
        fleet.evict(10)
        fleet.clear("p3")
        fleet.store(5)
        first_after = client.xrange(keys.kv_events, min=f"({last}", count=1)[0][0].decode()
        client.xtrim(keys.kv_events, minid=first_after, approximate=False)  # the cap dropped the history before
        events_since = client.xlen(keys.kv_events)

        routers["c"] = RouterProcess(redis_url, keys.prefix, "c")  # b, restarted
        restored = routers["c"].call("restore")["restored"]
        assert restored["position"] == last and restored["blocks"] == synced["a"]["indexed"] and not restored["lost"]
        last = fleet.last_id()
        synced = {name: r.call("sync", until=last) for name, r in routers.items()}
        assert synced["c"]["events"] == events_since, "the restarted router read the tail only"
        assert synced["c"]["indexed"] == synced["a"]["indexed"]
        asks = fleet.asks()
        choices, matches = fleet.expected(asks, loads, inflight)
        for r in routers.values():
            answer = r.call("route", **{**ask, "prompts": asks})
            assert answer["choices"] == choices and answer["matches"] == matches
    finally:
        for r in routers.values():
            r.kill()


def test_a_snapshot_older_than_the_stream_says_events_were_lost(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(f"t-{uuid.uuid4().hex[:10]}")
    fleet = Fleet(client, keys, seed=1)
    fleet.store(10)
    writer = IndexFollower(KVEventSubscriber(client, keys), router_id="w")
    writer.catch_up()
    assert writer.write_snapshot(*writer.export())
    fleet.store(10)
    client.xtrim(keys.kv_events, maxlen=3, approximate=False)  # events after the snapshot went too
    restored = IndexFollower(KVEventSubscriber(client, keys)).restore()
    assert restored.lost and restored.blocks == len(writer.index)


def test_cluster_view_follows_the_stream_from_the_snapshot(redis_url):
    """The dispatcher's view: starts from the snapshot, follows the stream, writes snapshots."""
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(f"t-{uuid.uuid4().hex[:10]}")
    prompt = list(range(5 * BLOCK))
    hashes = hash_blocks(prompt, BLOCK)
    KVEventPublisher(client, keys, "p0").stored(list(zip(hashes, [b"\0" * 16] + hashes[:-1])))
    first = ClusterView(Pools(), BLOCK, KVEventSubscriber(client, keys), snapshot_interval_s=0.0)

    async def follow(view: ClusterView, until: str) -> None:
        view.ensure_running()
        while stream_id(view.follower.position) < stream_id(until):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a snapshot written meanwhile
        await view.close()

    last = client.xrevrange(keys.kv_events, count=1)[0][0].decode()
    asyncio.run(follow(first, last))
    assert first.shape(prompt, None).matched_blocks == {"p0": 5}
    assert client.exists(f"{keys.kv_events}:snapshot")
    client.delete(keys.kv_events)  # history gone: only the snapshot knows
    second = ClusterView(Pools(), BLOCK, KVEventSubscriber(client, keys))
    KVEventPublisher(client, keys, "p1").stored(list(zip(hashes[:2], [b"\0" * 16] + hashes[:1])))
    asyncio.run(follow(second, client.xrevrange(keys.kv_events, count=1)[0][0].decode()))
    assert second.shape(prompt, None).matched_blocks == {"p0": 5, "p1": 2}
    shape = second.shape(prompt, None)
    second.routed(Replica("p2", "prefill", None), shape)
    assert second.shape(prompt, None).matched_blocks == {"p0": 5, "p1": 2, "p2": 5}, "predicted"
    assert second.index_size().predicted == 5 and np.array_equal(shape.hashes, block_ids(hashes))
