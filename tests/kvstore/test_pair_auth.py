"""The pair-group rendezvous listens on the advertised address only and forms a group only
between workers that prove they hold the same secret."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import redis
import torch.distributed as dist

from kvstore.config import SECRET_ENV, TransportConfig
from kvstore.errors import PeerAuthError
from kvstore.keys import RedisKeys
from kvstore.pair_groups import PairGroups
from kvstore.rendezvous import PairKeys, take
from tests.kvstore.handoff_peers import RECEIVER, SENDER
from tests.kvstore.local_pair import LocalPair, timed, transport

pytestmark = pytest.mark.redis


def listening_addresses(port: int) -> set[str]:
    """Local addresses (as /proc/net/tcp{,6} spell them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:
                    found.add(address)
    return found


def test_the_rendezvous_store_listens_on_the_advertised_address_only(redis_url: str) -> None:
    pair = LocalPair(redis_url)
    try:
        pair.exact("r", seed=1)
        store = pair.receiver_groups.get(SENDER).store  # the receiver ('decode-0') is rank 0: it hosts the store
        assert listening_addresses(store.port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 / ::
    finally:
        pair.close()


def test_a_peer_without_the_secret_is_refused_on_both_sides(redis_url: str) -> None:
    pair = LocalPair(redis_url, sender=transport(secret=None))
    try:
        recv, _ = pair.recv("r", seed=1)
        sent, got = pair.both(pair.send("r", seed=1), recv)
        assert isinstance(sent.value, PeerAuthError) and isinstance(got.value, PeerAuthError), (sent, got)
        assert (f"'{RECEIVER}' did not prove it holds this worker's KV transport secret (this worker has none)"
                in sent.error)
        assert f"refused by '{SENDER}': this worker's KV transport secret differs" in got.error
        assert max(sent.seconds, got.seconds) < 5
    finally:
        pair.close()


def test_an_intruder_at_the_store_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys("t-intruder")
    config = transport()
    with PairGroups(RECEIVER, client, keys, config, "cpu") as groups, ThreadPoolExecutor(1) as pool:
        forming = pool.submit(timed, lambda: groups.get(SENDER))
        record = take(client, PairKeys.of(keys, RECEIVER, SENDER), 10, RECEIVER)
        intruder = dist.TCPStore(record.host, record.port, 2, False, timeout=timedelta(seconds=10))
        intruder.set("tierserve/auth/1", json.dumps({"nonce": "00", "proof": "0" * 64}))
        assert intruder.get("tierserve/auth/0") == b"refused"
        assert forming.result(timeout=30).error.startswith(
            f"PeerAuthError: pair group {RECEIVER}|{SENDER} refused: '{SENDER}' (or whoever joined as it) did not "
            f"prove it holds this worker's KV transport secret")
    client.close()


def test_a_secret_is_required_off_loopback_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="TransportConfig.secret is required: pair groups listen on '10.1.2.3'"):
        PairGroups("w", None, RedisKeys("t"), TransportConfig(advertise_host="10.1.2.3"), "cpu")
    monkeypatch.delenv(SECRET_ENV, raising=False)
    local = TransportConfig.for_cluster(local=True)
    assert local.advertise_host == "127.0.0.1" and len(local.secret) == 64
    assert local.secret != TransportConfig.for_cluster(local=True).secret
    assert local.secret not in repr(local)
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-0123")
    assert TransportConfig.for_cluster(local=False) == TransportConfig(secret="from-the-environment-0123")
