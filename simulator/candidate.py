"""What the planner searches over: design families and the candidates simulated in them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.design import Design
from simulator.metrics import SimResult
from simulator.slo import SLO


@dataclass(frozen=True)
class Family:
    kind: str
    tiers: tuple[str, ...]  # colocated (X,); disaggregated (prefill, decode); offload (compute, attention)
    tps: tuple[int, ...]    # tp per pool, in the design's pool order


@dataclass(frozen=True)
class Candidate:
    family: Family
    sizes: tuple[int, ...]  # replicas per pool, in the design's pool order
    design: Design
    result: SimResult
    badness: float          # the worst percentile / bound; <= 1 meets the SLO

    @property
    def passed(self) -> bool:
        return self.badness <= 1.0


def badness(result: SimResult, slo: SLO) -> float:
    if result.rejected:
        return math.inf
    return max(result.percentiles[k] / v for k, v in slo.checked)
