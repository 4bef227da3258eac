"""Simulate one design on one trace and summarize it: the call everything else builds on."""

from __future__ import annotations

from simulator.costs import CostModels
from simulator.design import Design
from simulator.metrics import SimResult, summarize
from simulator.simulation import Simulation
from simulator.slo import SLO
from simulator.traces.trace import Trace


def simulate(design: Design, trace: Trace, costs: CostModels, slo: SLO | None = None) -> SimResult:
    return summarize(Simulation(design, costs, trace).run(), slo, costs.catalog)
