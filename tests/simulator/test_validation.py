"""The issue's validation list: operator sums, M/D/1, monotonicity, seeds, Splitwise and Lamina directions.
Run with -s to see each table (paper numbers beside ours)."""

from __future__ import annotations

from simulator import comparisons, validation
from simulator.costs import CostModels
from simulator.validation import Table


def show(table: Table) -> None:
    print(f"\n{table.title}\n  " + " | ".join(table.columns))
    for row in table.rows:
        print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    if table.note:
        print(f"  {table.note}")


def test_single_request_latency_is_the_sum_of_operator_times(costs: CostModels) -> None:
    table = validation.single_request(costs)
    show(table)
    assert table.passed


def test_queueing_matches_md1(costs: CostModels) -> None:
    table = validation.md1(costs)
    show(table)
    assert table.passed


def test_latency_is_monotonic_in_load_and_capacity(costs: CostModels) -> None:
    table = validation.monotonic(costs)
    show(table)
    assert table.passed


def test_runs_are_reproducible_with_a_seed(costs: CostModels) -> None:
    table = validation.reproducible(costs)
    show(table)
    assert table.passed


def test_splitwise_direction(costs_70b: CostModels) -> None:
    table = comparisons.splitwise(costs_70b)
    show(table)
    assert table.passed  # split and heterogeneous split beat the paper's baseline on throughput and per $


def test_lamina_direction(costs_70b: CostModels) -> None:
    table = comparisons.lamina(costs_70b)
    show(table)
    assert table.passed
