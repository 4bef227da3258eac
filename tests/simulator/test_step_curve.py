"""Closed-form runs of decode steps against stepping one at a time."""

from __future__ import annotations

import random

import pytest

from simulator.costs import CostModels
from simulator.offload import OffloadCost, OffloadLink
from simulator.step_curve import ALL, piece_steps, run, steps_to_reach


def step_by_step(pieces, batch: int, context: int, m: int) -> list[float]:
    times = []
    for _ in range(m):
        _, a, b = max((p for p in pieces if p[0] <= context), key=lambda p: p[0])
        times.append(a + b * context)
        context += batch
    return times


PIECES = [((0.0, 0.01, 1e-7),), ((0.0, 0.02, 2e-8), (3e5, 0.011, 5e-8)), ((0.0, 0.005, 0.0), (10.0, 0.004, 1e-7))]


@pytest.mark.parametrize("pieces", PIECES)
def test_run_and_segments_match_stepping(pieces) -> None:
    rng = random.Random(2)
    for _ in range(100):
        batch, context, m = rng.randint(1, 256), rng.randint(1, 10**6), rng.randint(1, 500)
        sink: list = []
        expected = step_by_step(pieces, batch, context, m)
        assert run(pieces, batch, context, m, sink) == pytest.approx(sum(expected), rel=1e-12)
        assert sum(s[1] for s in sink) == m
        flat = [d0 + i * delta for _, n, d0, delta in sink for i in range(n)]
        assert flat == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("pieces", PIECES)
def test_steps_to_reach_is_the_first_step_past_the_target(pieces) -> None:
    rng = random.Random(3)
    for _ in range(200):
        batch, context = rng.randint(1, 256), rng.randint(1, 10**6)
        dt = rng.uniform(1e-4, 5.0)
        m = steps_to_reach(pieces, batch, context, dt)
        assert run(pieces, batch, context, m) >= dt
        assert m == 1 or run(pieces, batch, context, m - 1) < dt


@pytest.mark.parametrize("pieces", PIECES)
def test_piece_steps_is_where_run_keeps_one_series(pieces) -> None:
    """Up to n steps run as one segment on the piece piece_steps names (the decode batch's closed forms,
    to the bit); one more crosses into the next piece."""
    rng = random.Random(4)
    for _ in range(200):
        batch, context = rng.randint(1, 256), rng.uniform(0, 10**6)
        a, b, n = piece_steps(pieces, batch, context)
        m = min(n, rng.randint(1, 500))
        sink: list = []
        total = run(pieces, batch, context, m, sink)
        assert sink == [(batch, m, a + b * context, b * batch)]
        assert total == m * (a + b * context) + b * batch * m * (m - 1) / 2
        if n != ALL:
            sink.clear()
            run(pieces, batch, context, n + 1, sink)
            assert len(sink) == 2


def test_offload_pieces_equal_the_pipeline_formula(costs: CostModels) -> None:
    cost = OffloadCost(costs.replica("H100", 1), costs.replica("H20", 1), 0.5, OffloadLink(40e9, 10e-6), 2)
    for batch in (1, 16, 128):
        pieces = cost.decode_pieces(batch)
        assert len(pieces) == 2
        for context in (batch * 10, batch * 2000, batch * 30000):
            assert step_by_step(pieces, batch, context, 1)[0] == pytest.approx(cost.step_seconds(batch, context))
