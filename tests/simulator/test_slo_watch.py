"""Runs stopped once the SLO is missed for sure: the verdict is the whole run's, and the plan is the
one that runs every design to its end (and the one a CPU budget that does not cut finds; one that
cuts the search still finds the winner there)."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from simulator import planner as planner_module
from simulator import simulation
from simulator.costs import CostModels
from simulator.design_spec import parse_design
from simulator.planner import Planner, PlanOptions
from simulator.run import simulate, verdict
from simulator.slo import parse_slo
from simulator.traces.load import load_trace
from simulator.uncertainty import prior_for

TRACE = "synthetic:n=1200,rate=25,workload=conversation,seed=8"
PLAN_TRACE = "synthetic:n=2400,rate=30,workload=coding,seed=9"
CUT_SLO = "ttft_p99=2,tbt_p99=100ms"


@pytest.mark.parametrize("spec", ["colocated=H100x1", "colocated=H100x2", "colocated=L4x2",
                                  "prefill=H100x1,decode=L40Sx1", "prefill=L4x1,decode=H100x2",
                                  "prefill=H100x2,decode=H100x1,attention=H20x1"])
@pytest.mark.parametrize("slo", ["ttft_p99=1,tbt_p99=60ms", "ttft_p50=0.2,e2e_p90=8", "tpot_p95=30ms"])
def test_verdict_is_the_whole_runs(costs: CostModels, spec: str, slo: str) -> None:
    trace, bounds = load_trace(TRACE), parse_slo(slo)
    design = parse_design(spec, costs.catalog)
    whole = simulate(design, trace, costs, bounds)
    quick = verdict(design, trace, costs, bounds)
    if quick is None:
        assert not whole.meets(bounds)
    else:
        assert quick.percentiles == whole.percentiles and quick.meets(bounds) == whole.meets(bounds)


def test_a_design_missing_the_slo_stops_early(costs: CostModels) -> None:
    design = parse_design("colocated=L4x1", costs.catalog)
    assert verdict(design, load_trace(TRACE), costs, parse_slo("ttft_p99=1")) is None


@pytest.fixture(scope="module")
def plans(costs: CostModels):
    trace, slo = load_trace(PLAN_TRACE), parse_slo("ttft_p99=0.4,tpot_p99=40ms")
    options = PlanOptions(hardware=("H100", "A100-80G", "L40S", "H20"), search_requests=800)
    quick = Planner(trace, costs, slo, options).plan()
    whole = Planner(trace, costs, slo, options)
    whole.passes = lambda fam, sizes, trace=None: whole.evaluate(fam, sizes, trace).passed  # type: ignore[method-assign]
    budgeted = Planner(trace, costs, slo, PlanOptions(**{**options.__dict__, "time_budget_s": 60.0})).plan()
    return quick, whole.plan(), budgeted


def test_early_stops_leave_the_plan_unchanged(plans) -> None:
    quick, whole, _ = plans
    assert quick.best is not None and quick.stopped > 0
    assert [c.design for c in quick.family_bests] == [c.design for c in whole.family_bests]
    assert quick.best.result == whole.best.result


def test_a_budget_that_does_not_cut_changes_nothing(plans) -> None:
    quick, _, budgeted = plans
    assert not any("time budget" in s for s in budgeted.skipped)
    assert budgeted.best is not None and budgeted.best.design == quick.best.design
    assert [c.design for c in budgeted.family_bests] == [c.design for c in quick.family_bests]


def test_a_budget_that_cuts_the_search_still_finds_the_winner(costs_70b: CostModels,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Families are searched most promising first (Planner.promise), so a budget that stops the
    search at 40% of its work drops the least promising ones. The 20k-request case of BENCHMARKS.md,
    shortened: searched cheapest load bound first, smallest tp first, any such cut chose
    4xH100(tp2) -> 2xH20(tp2) over the winner. The clock counts simulated requests (1e-4 s each),
    so the cut does not depend on this machine's speed."""
    clock = [0.0]
    run = simulation.Simulation.run

    def counted(self, *args, **kwargs):
        clock[0] += len(self.trace) * 1e-4
        return run(self, *args, **kwargs)

    monkeypatch.setattr(simulation.Simulation, "run", counted)
    monkeypatch.setattr(planner_module, "time", SimpleNamespace(process_time=lambda: clock[0],
                                                                perf_counter=time.perf_counter))
    trace, slo = load_trace("synthetic:n=2000,rate=5.4,workload=conversation,seed=2023"), parse_slo(CUT_SLO)
    prior = prior_for(costs_70b)
    options = PlanOptions(search_requests=400, slowdown=prior.quantile(0.8))
    whole = Planner(trace, costs_70b, slo, options).plan()
    work, clock[0] = clock[0], 0.0
    cut = Planner(trace, costs_70b, slo, replace(options, time_budget_s=0.4 * work)).plan()
    assert any("time budget" in s for s in cut.skipped)
    assert whole.best is not None and cut.best is not None and cut.best.design == whole.best.design
