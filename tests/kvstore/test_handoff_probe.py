"""kvstore/handoff_probe.py's pair runner: a rank that dies mid-measurement ends the run at once with
a plain error, its peer killed, instead of the caller waiting out the timeout."""

from __future__ import annotations

import os
import time

import pytest

from kvstore.handoff_probe import run_pair

pytestmark = pytest.mark.redis


def dies_on_rank_0(rank, groups, group, device, out) -> None:
    """Rank 0 dies as a killed process does (no Python exit, nothing sent); rank 1 waits for it."""
    if rank == 0:
        os._exit(9)
    time.sleep(120)


def test_a_dead_rank_ends_the_pair_run_at_once(redis_url) -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ended before sending its results \(exit codes \[9"):
        run_pair(dies_on_rank_0, (), "cpu", redis_url, results=1, timeout_s=300)
    assert time.monotonic() - start < 60  # not the 300 s timeout, nor rank 1's 120 s sleep
