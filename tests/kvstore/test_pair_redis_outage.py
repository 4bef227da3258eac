"""A formed pair group keeps handing off while its real redis-server is away: hung (SIGSTOP)
or gone (killed); one log line when the epoch check stops working, one when it works again.
Only forming a group needs Redis (kvstore/pair_groups.py)."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import redis

from kvstore.redis_server import RedisServer
from tests.kvstore.local_pair import LocalPair, transport

pytestmark = pytest.mark.redis


def test_a_formed_pair_hands_off_while_redis_is_hung_then_dead(caplog):
    caplog.set_level(logging.WARNING, logger="kvstore.pair_groups")
    server = RedisServer(supervise=False)  # nobody restarts it behind the test's back
    url = server.start()
    pair = LocalPair(url, sender=transport(timeout_s=5), receiver=transport(timeout_s=5))
    try:
        pair.exact("formed", seed=1)  # forms the group (needs Redis)
        os.kill(server.proc.pid, signal.SIGSTOP)  # hung: connections open, no answers
        try:
            for i in range(3):
                start = time.monotonic()
                pair.exact(f"hung-{i}", seed=2 + i)
                assert time.monotonic() - start < 4  # one bounded check at most, not Redis's silence
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.proc.kill()  # gone: connections refused
        server.proc.wait(timeout=10)
        with pytest.raises(redis.ConnectionError):
            pair.redis.ping()
        for i in range(3):
            pair.exact(f"dead-{i}", seed=10 + i)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and all("pair-epoch checks failing" in line for line in lines), lines  # one per side
    finally:
        pair.close()
        server.stop()
