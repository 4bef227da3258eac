"""The capacity planner: the cheapest design ($/hour) that meets an SLO at the trace's rate.

Designs come in families: colocated on one tier, disaggregated prefill/decode tiers, and
attention-offloaded (prefill and dense decode on one tier, attention on another). Families are
searched cheapest lower bound first; a family whose lower bound already costs more than the best
design found is skipped. Within a family the search starts at the load bounds, grows the pool
the SLO violation points at, then shrinks each pool by bisection while the SLO still holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from simulator.bounds import LoadBounds
from simulator.costs import CostModels, min_tp
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.metrics import SimResult
from simulator.run import simulate
from simulator.search import search_family
from simulator.slo import SLO
from simulator.traces.trace import Trace

KINDS = ("colocated", "disaggregated", "offload")


@dataclass(frozen=True)
class PlanOptions:
    kinds: tuple[str, ...] = KINDS
    hardware: tuple[str, ...] = ()     # tiers to consider; empty: the whole catalog
    max_replicas: int = 64             # per pool
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    router: str = "prefix_aware"
    search_requests: int = 4000        # the search runs on the trace's first requests; the winner is rerun on all

    def __post_init__(self) -> None:
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise SimInputError(f"design kinds must be among {KINDS}, got {self.kinds}")
        if self.max_replicas < 1 or self.search_requests < 1:
            raise SimInputError("max_replicas and search_requests must be >= 1")


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


@dataclass(frozen=True)
class Plan:
    best: Candidate | None
    family_bests: tuple[Candidate, ...]
    evaluated: tuple[Candidate, ...]
    skipped: tuple[str, ...]


def badness(result: SimResult, slo: SLO) -> float:
    if result.rejected:
        return math.inf
    return max(result.percentiles[k] / v for k, v in slo.checked)


class Planner:
    def __init__(self, trace: Trace, costs: CostModels, slo: SLO, options: PlanOptions = PlanOptions(),
                 progress: Callable[[str], None] | None = None) -> None:
        self.full, self.costs, self.slo, self.options = trace, costs, slo, options
        self.trace = trace.head(options.search_requests)
        self.bounds = LoadBounds(self.trace, costs, options.max_num_seqs, options.max_num_batched_tokens)
        self.progress = progress or (lambda _: None)
        self.evaluated: list[Candidate] = []
        self._cache: dict[tuple, Candidate] = {}

    # ---- families and designs
    def families(self) -> tuple[list[Family], list[str]]:
        cat, opts = self.costs.catalog, self.options
        names = [n for n in cat.names() if not opts.hardware or n in opts.hardware]
        gpus = [n for n in names if cat[n].kind == "gpu"]
        tps = {n: min_tp(self.costs.model, cat[n], opts.max_num_batched_tokens, self._longest()) for n in gpus}
        skipped = [f"{n}: {self.costs.model.name} does not fit on one node" for n in gpus if tps[n] is None]
        fit = [n for n in gpus if tps[n] is not None]
        fams = []
        if "colocated" in opts.kinds:
            fams += [Family("colocated", (x,), (tps[x],)) for x in fit]
        if "disaggregated" in opts.kinds:
            fams += [Family("disaggregated", (p, d), (tps[p], tps[d])) for p in fit for d in fit]
        if "offload" in opts.kinds:
            fams += [Family("offload", (c, m), (tps[c], tps[c], 1)) for c in fit for m in names if m != c]
        return fams, skipped

    def _longest(self) -> int:
        return int((self.full.prompt_tokens + self.full.output_tokens).max())

    def design(self, fam: Family, sizes: tuple[int, ...]) -> Design:
        opts = self.options

        def pool(hw: str, n: int, tp: int) -> PoolSpec:
            return PoolSpec(hw, n, tp, opts.max_num_seqs, opts.max_num_batched_tokens)

        if fam.kind == "colocated":
            return Design(colocated=pool(fam.tiers[0], sizes[0], fam.tps[0]), router=opts.router)
        if fam.kind == "disaggregated":
            return Design(prefill=pool(fam.tiers[0], sizes[0], fam.tps[0]),
                          decode=pool(fam.tiers[1], sizes[1], fam.tps[1]), router=opts.router)
        c, m = fam.tiers
        return Design(prefill=pool(c, sizes[0], fam.tps[0]), decode=pool(c, sizes[1], fam.tps[1]),
                      attention=pool(m, sizes[2], 1), router=opts.router)

    def lower_bounds(self, fam: Family) -> tuple[int, ...]:
        b = self.bounds
        if fam.kind == "colocated":
            return (b.colocated(fam.tiers[0], fam.tps[0]),)
        p = b.prefill(fam.tiers[0], fam.tps[0])
        if fam.kind == "disaggregated":
            return (p, b.decode(fam.tiers[1], fam.tps[1]))
        return (p, b.offload_compute(fam.tiers[0], fam.tps[1]), b.attention(fam.tiers[1]))

    def cost(self, fam: Family, sizes: tuple[int, ...]) -> float:
        return self.design(fam, sizes).cost_per_hour(self.costs.catalog)

    def evaluate(self, fam: Family, sizes: tuple[int, ...], trace: Trace | None = None) -> Candidate:
        trace = trace or self.trace
        key = (fam, sizes, id(trace))
        if key not in self._cache:
            design = self.design(fam, sizes)
            self.progress(design.label())
            result = simulate(design, trace, self.costs, self.slo)
            self._cache[key] = Candidate(fam, sizes, design, result, badness(result, self.slo))
            if trace is self.trace:
                self.evaluated.append(self._cache[key])
        return self._cache[key]

    # ---- the search
    def plan(self) -> Plan:
        """Search every family (cheapest bound first, per-kind pruning) and confirm on the full trace."""
        fams, skipped = self.families()
        fams.sort(key=lambda f: self.cost(f, self.lower_bounds(f)))
        kind_best: dict[str, float] = {}
        bests = []
        for fam in fams:
            found = search_family(self, fam, kind_best.get(fam.kind, math.inf), self.trace)
            if found is not None:
                confirmed = self._confirm(fam, found)
                if confirmed is not None:
                    bests.append(confirmed)
                    kind_best[fam.kind] = min(kind_best.get(fam.kind, math.inf),
                                              confirmed.design.cost_per_hour(self.costs.catalog))
        bests.sort(key=lambda c: c.design.cost_per_hour(self.costs.catalog))
        return Plan(bests[0] if bests else None, tuple(bests), tuple(self.evaluated), tuple(skipped))

    def _confirm(self, fam: Family, cand: Candidate) -> Candidate | None:
        """Rerun on the whole trace; if it fails there, keep growing on the whole trace."""
        if len(self.full) == len(self.trace):
            return cand
        full = self.evaluate(fam, cand.sizes, self.full)
        return full if full.passed else search_family(self, fam, math.inf, self.full, start=cand.sizes)
