"""The issue's validation list: operator sums, M/D/1, monotonicity, seeds, Splitwise and Lamina directions.
Run with -s to see each table (paper numbers beside ours)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator import comparisons, validation
from simulator.costs import CostModels
from simulator.validation import Table

CHECKS: list[tuple[Callable[[CostModels], Table], str]] = [
    (validation.single_request, "costs"),   # single-request latency is the sum of operator times
    (validation.md1, "costs"),              # queueing at one server matches M/D/1
    (validation.monotonic, "costs"),        # latency grows with load, shrinks with capacity
    (validation.reproducible, "costs"),     # a seed reproduces a run exactly
    (comparisons.splitwise, "costs_70b"),   # split and heterogeneous split beat the paper's baseline
    (comparisons.lamina, "costs_70b"),      # attention offload beats homogeneous decode per $
]


def show(table: Table) -> None:
    print(f"\n{table.title}\n  " + " | ".join(table.columns))
    for row in table.rows:
        print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    if table.note:
        print(f"  {table.note}")


@pytest.mark.parametrize("check, models", CHECKS, ids=[c.__name__ for c, _ in CHECKS])
def test_validation_table_passes(check: Callable[[CostModels], Table], models: str, request) -> None:
    table = check(request.getfixturevalue(models))
    show(table)
    assert table.passed, table.title


def test_splitwise_slo_is_a_slowdown_against_the_request_alone(costs_70b: CostModels) -> None:
    from simulator.design import Design, PoolSpec
    from simulator.simulation import Simulation
    from simulator.traces.trace import make_trace
    slo = comparisons.SplitwiseSLO(costs_70b, "A100-80G", 8)
    design = Design(colocated=PoolSpec("A100-80G", 1, 8, 512, 2048))
    record = Simulation(design, costs_70b, make_trace("alone", [0.0], [1000], [100])).run()
    slow = slo.slowdowns(record)
    # alone on the reference: TTFT and E2E slowdowns 1 (iteration overhead aside), mean TBT just under 1
    # (Splitwise divides by all output tokens, the first one made by the prefill)
    assert abs(slow["ttft"][0] - 1) < 0.01 and abs(slow["e2e"][0] - 1) < 0.02 and 0.97 < slow["tbt"][0] < 1.01
    assert slo.meets(record)
