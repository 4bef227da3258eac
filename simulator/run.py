"""Simulate one design on one trace and summarize it: the call everything else builds on."""

from __future__ import annotations

from simulator.costs import CostModels
from simulator.design import Design
from simulator.metrics import SimResult, summarize
from simulator.simulation import Simulation
from simulator.slo import SLO
from simulator.slo_watch import SloMissed
from simulator.traces.trace import Trace


def simulate(design: Design, trace: Trace, costs: CostModels, slo: SLO | None = None,
             request_gaps: bool = False) -> SimResult:
    """``request_gaps``: the result's samples carry each request's p90 token gap (slower)."""
    return summarize(Simulation(design, costs, trace, request_gaps=request_gaps).run(), slo, costs.catalog)


def verdict(design: Design, trace: Trace, costs: CostModels, slo: SLO) -> SimResult | None:
    """``simulate``, for a pass/fail question: None as soon as the SLO is missed for sure (the run
    stops there; slo_watch.py); a run that completes gives its result, passing or not."""
    try:
        record = Simulation(design, costs, trace, stop_on=slo).run()
    except SloMissed:
        return None
    return summarize(record, slo, costs.catalog)
