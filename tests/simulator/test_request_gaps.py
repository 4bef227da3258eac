"""Each request's p90 token gap (Simulation(request_gaps=True)): what benchmarks/serve.py judges a
request's TBT by, computed from the steps the request was in."""

from __future__ import annotations

import math

import pytest

from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.hardware import load_catalog
from simulator.models import load_model
from simulator.run import simulate
from simulator.traces.trace import make_trace

COSTS = CostModels(load_model("llama-3-8b"), load_catalog())
DESIGN = Design(colocated=PoolSpec("H100", 1, 1, 64, 1024), prefix_caching=False)


def _gap_p90(prompts: list[int], outputs: list[int], arrivals: list[float]) -> list[float]:
    result = simulate(DESIGN, make_trace("gaps", arrivals, prompts, outputs), COSTS, request_gaps=True)
    assert result.samples is not None and result.samples.gap_p90 is not None
    return result.samples.gap_p90.tolist()


def test_a_lone_request_p90_is_its_decode_step() -> None:
    alone = simulate(DESIGN, make_trace("alone", [0.0, 5.0], [100, 100], [41, 1]), COSTS, request_gaps=True)
    p90, single = alone.samples.gap_p90
    assert math.isnan(single)  # one output token: no gaps (serve.py counts it good)
    assert p90 == pytest.approx(alone.percentiles["tbt_p50"], rel=0.02)
    plain = simulate(DESIGN, make_trace("alone", [0.0, 5.0], [100, 100], [41, 1]), COSTS)
    assert plain.samples.gap_p90 is None and plain.percentiles == alone.percentiles  # opt-in, same run


def test_p90_follows_how_many_of_its_steps_were_slow() -> None:
    """A decodes 200 tokens while 1024-token prompts arrive one by one, each prefilled in one mixed step
    beside it: 8 of them are 4% of A's steps (its p90 stays a decode step), 40 are 20% (its p90 is a
    mixed step's time), though A's mean gap moves far less."""
    def run(prompts: int) -> tuple[float, float]:
        arrivals = [0.0] + [0.05 + 0.02 * i for i in range(prompts)]
        result = simulate(DESIGN, make_trace("gaps", arrivals, [100] + [1024] * prompts, [200] + [1] * prompts),
                          COSTS, request_gaps=True)
        return result.samples.gap_p90[0], result.samples.tpot[0]
    lone, few, many = run(0), run(8), run(40)
    assert few[0] == pytest.approx(lone[0], rel=0.05)
    assert many[0] > 2 * few[0]
    assert many[1] < many[0] * 0.75  # the mean gap stays well below the p90 the request is judged by
