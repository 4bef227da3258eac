"""The compiled roofline sum returns the loop's float, bit for bit."""

from __future__ import annotations

import random

import pytest

from simulator.hardware import Catalog
from simulator.models import load_model
from simulator.roofline import RooflineCost
from simulator.row_sum import compile_rows, loop_sum


@pytest.mark.parametrize("model", ["llama-3-8b", "llama-3-70b"])
@pytest.mark.parametrize("hardware,tp", [("H100", 1), ("H100", 8), ("A100-80G", 4), ("L4", 1)])
def test_compiled_sum_equals_loop(catalog: Catalog, model: str, hardware: str, tp: int) -> None:
    cost = RooflineCost(load_model(model), catalog[hardware], tp)
    rows = cost._rows
    compiled = compile_rows(rows, cost.overhead_s)
    rng = random.Random(0)
    for _ in range(2000):
        work = [rng.choice([0, 1, rng.randrange(1, 600), rng.randrange(1, 10**9)]) for _ in range(4)]
        assert compiled(*work) == loop_sum(rows, cost.overhead_s, *work)


def test_zero_rows_and_bad_rows() -> None:
    assert compile_rows([(0.0,) * 11], 0.5)(3, 4, 5, 6) == 0.5
    assert compile_rows([(0.0,) * 10 + (0.25,)], 0.5)(3, 4, 5, 6) == 0.75
    with pytest.raises(ValueError):
        compile_rows([(float("inf"),) + (0.0,) * 10], 0.0)
    with pytest.raises(ValueError):
        compile_rows([(1.0,) * 10], 0.0)
