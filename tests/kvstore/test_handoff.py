"""KV handoff between two real processes over gloo, pair group formed through Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from kvstore.config import TransportConfig
from kvstore.errors import RendezvousTimeoutError
from kvstore.keys import RedisKeys
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroups
from tests.kvstore.handoff_peers import RECEIVER, SENDER, Step, run_pair

pytestmark = pytest.mark.redis

LAYOUT = KVLayout(num_layers=5, block_size=4, num_kv_heads=2, head_dim=8, dtype="bfloat16")


def test_handoff_moves_exact_bytes_and_reports_mismatches_on_both_sides(redis_url: str) -> None:
    steps = [
        Step("r1", "r1", 9, 9, seed=1),                 # exact, random non-contiguous ids
        Step("r2", "r2", 3, 4, seed=2),                 # block count mismatch
        Step("r3", "r3", 1, 1, seed=3),                 # the group still works after a rejection
        Step("r4", "other", 2, 2, seed=4),              # crossed requests
        Step("r5", "r5", 48, 48, seed=5),               # the whole cache
        Step("", "never-sent", 0, 1, seed=6),           # nobody sends: receiver times out, aborts
        Step("r7", "r7", 5, 5, seed=7, reform=True),    # a fresh group after the abort
        Step("g", "g", 1, 1, seed=8, garbage=True),     # an unreadable header: the group is dropped
        Step("r9", "r9", 4, 4, seed=9, reform=True),    # and formed again
    ]
    sender = TransportConfig(advertise_host="127.0.0.1", layers_per_chunk=2, transfer_timeout_s=60)
    receiver = TransportConfig(advertise_host="127.0.0.1", layers_per_chunk=3, transfer_timeout_s=3)
    out = run_pair(redis_url, _prefix(), (LAYOUT, LAYOUT), steps, (sender, receiver), ("cpu", "cpu"))
    got, sent = out[RECEIVER], out[SENDER]
    assert [o.exact for o in got] == [True, None, True, None, True, None, True, None, True]
    assert [o.error is None for o in sent] == [True, False, True, False, True, True, True, True, True]
    assert "sender has 3 blocks for request 'r2', receiver allocated 4" in got[1].error
    assert sent[1].error.startswith(f"HandoffError: '{RECEIVER}' rejected the handoff: sender has 3 blocks")
    assert "request 'r4' arrived where 'other' was expected" in got[3].error
    assert "request 'r4' arrived where 'other' was expected" in sent[3].error
    assert got[5].error == (f"HandoffTimeoutError: timed out waiting for '{SENDER}' to hand off "
                            f"request 'never-sent' (transfer_timeout_s=3)")
    assert got[7].error.startswith(f"HandoffError: unreadable handoff header from '{SENDER}' (group dropped)")


def test_layout_mismatch_is_rejected_with_both_layouts_named(redis_url: str) -> None:
    fp16 = KVLayout(num_layers=5, block_size=4, num_kv_heads=2, head_dim=8, dtype="float16")
    config = TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=30)
    out = run_pair(redis_url, _prefix(), (LAYOUT, fp16), [Step("r", "r", 2, 2, seed=8)],
                   (config, config), ("cpu", "cpu"))
    message = "sender layout L5.B4.H2.D8.bfloat16 differs from receiver layout L5.B4.H2.D8.float16"
    assert message in out[RECEIVER][0].error and message in out[SENDER][0].error


def test_rendezvous_timeout_names_the_peer(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    config = TransportConfig(advertise_host="127.0.0.1", rendezvous_timeout_s=0.5)
    with PairGroups("z-decode", client, RedisKeys(_prefix()), config, "cpu") as groups:
        with pytest.raises(RendezvousTimeoutError, match="peer 'a-prefill' did not publish"):
            groups.get("a-prefill")
        with pytest.raises(ValueError, match="with itself"):
            groups.get("z-decode")
    client.close()


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"
