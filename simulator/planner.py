"""The capacity planner: the cheapest design ($/hour) that meets an SLO at the trace's rate.

Designs come in families: colocated on one tier, disaggregated prefill/decode tiers, and
attention-offloaded (prefill and dense decode on one tier, attention on another), each at every
power-of-two tp that holds the model, up to the node's GPU count (``tp_choices`` limits them). Families are
searched most promising first: cheapest estimated design (the load bounds with the prefill pool sized
for the ttft bounds by an M/M/c queue, bounds.py), any kind and tp, so a time budget that stops the
search drops the least promising families; a family whose lower bound already costs more than the best
design of its kind (its larger-tp variants: than the best design of any kind) is skipped. Within
a family the search starts at the load bounds, grows the pool the SLO violation points at, shrinks
each pool by bisection and trades replicas between pools (any prefill:decode:attention ratio)
while the SLO still holds. Searches run on the trace's first ``search_requests`` requests; each
family's best is rerun on the whole trace (grown there if it fails) unless it already costs more
than the best design confirmed there (a rerun only grows a design: it could not win), and the
winner is shrunk there again. The time budget counts the process's CPU time. Every run uses the
costs slowed by ``slowdown`` (``tierserve plan --confidence``: the prior's quantile, so the winner
holds with that probability); the winner's uncertainty band and P(SLO met) come from ``prior``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from simulator.bounds import LoadBounds
from simulator.candidate import Candidate, Family, badness
from simulator.costs import CostModels, min_tp
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.metrics import SimResult
from simulator.operators import prefill_work
from simulator.run import simulate, verdict
from simulator.search import search_family, shrink, trade
from simulator.slo import PERCENTILES, SLO
from simulator.traces.trace import Trace
from simulator.uncertainty import Band, SlowdownPrior, band

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
    tp_choices: int | None = None      # tp degrees per tier: the smallest that fits, doubled up to the
                                       # node's GPU count (max_devices_per_node); None: all of those, else the first N
    slowdown: float = 1.0              # every modeled time x this while searching (a prior's quantile)
    prior: SlowdownPrior | None = None  # the winner's band and P(SLO met); None: none
    time_budget_s: float | None = None  # CPU seconds; stop starting family searches after ~60% of it

    def __post_init__(self) -> None:
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise SimInputError(f"design kinds must be among {KINDS}, got {self.kinds}")
        if self.max_replicas < 1 or self.search_requests < 1 or (self.tp_choices is not None and self.tp_choices < 1):
            raise SimInputError("max_replicas, search_requests and tp_choices must be >= 1")
        if not self.slowdown > 0:
            raise SimInputError(f"slowdown must be > 0, got {self.slowdown}")


@dataclass
class _Found:
    """A family's best on the head and, once resolved, on the whole trace (None: it failed there)."""
    family: Family
    head: Candidate
    head_cost: float
    confirmed: Candidate | None = None
    resolved: bool = False


@dataclass(frozen=True)
class Plan:
    best: Candidate | None
    family_bests: tuple[Candidate, ...]
    evaluated: tuple[Candidate, ...]
    skipped: tuple[str, ...]
    band: Band | None = None           # the winner on the whole trace under the prior
    seconds: float = 0.0               # CPU time of the process (user + system): what the time budget counts
    head_only: tuple[Candidate, ...] = ()  # family bests on the head not rerun: they cost more than the winner
    stopped: int = 0                   # runs stopped once they missed the SLO for sure (pass/fail questions)
    wall_seconds: float = 0.0          # wall-clock time (longer on a loaded machine; not budgeted)


class Planner:
    def __init__(self, trace: Trace, costs: CostModels, slo: SLO, options: PlanOptions = PlanOptions(),
                 progress: Callable[[str], None] | None = None) -> None:
        self.full, self.base_costs, self.slo, self.options = trace, costs, slo, options
        self.costs = costs.slowed(options.slowdown)
        self.trace = trace.head(options.search_requests)
        self.bounds = LoadBounds(self.trace, self.costs, options.max_num_seqs, options.max_num_batched_tokens)
        self.progress = progress or (lambda _: None)
        self.evaluated: list[Candidate] = []
        self._cache: dict[tuple, Candidate] = {}
        self._missed: set[tuple] = set()  # (family, sizes, trace id) whose runs stopped: the SLO missed
        self.stopped = 0                   # runs stopped early so (pass/fail questions)

    # ---- families and designs
    def families(self) -> tuple[list[Family], list[str]]:
        cat, opts = self.costs.catalog, self.options
        names = [n for n in cat.names() if not opts.hardware or n in opts.hardware]
        gpus = [n for n in names if cat[n].kind == "gpu"]
        smallest = {n: min_tp(self.costs.model, cat[n], opts.max_num_batched_tokens, self._longest()) for n in gpus}
        skipped = [f"{n}: {self.costs.model.name} does not fit on one node" for n in gpus if smallest[n] is None]
        fit = [n for n in gpus if smallest[n] is not None]
        tps = {n: self._tps(smallest[n], cat[n].max_devices_per_node) for n in fit}
        fams = []
        if "colocated" in opts.kinds:
            fams += [Family("colocated", (x,), (t,)) for x in fit for t in tps[x]]
        if "disaggregated" in opts.kinds:
            fams += [Family("disaggregated", (p, d), (tp, td)) for p in fit for d in fit
                     for tp in tps[p] for td in tps[d]]
        if "offload" in opts.kinds:
            fams += [Family("offload", (c, m), (t, t, 1)) for c in fit for m in names if m != c for t in tps[c]]
        return fams, skipped

    def _tps(self, smallest: int, most: int) -> list[int]:
        """The tp degrees of a tier: ``smallest`` doubled up to ``most`` (one node's GPUs), at most
        ``tp_choices`` of them."""
        tps = []
        while smallest <= most and (self.options.tp_choices is None or len(tps) < self.options.tp_choices):
            tps.append(smallest)
            smallest *= 2
        return tps

    def _smallest_tp(self, fam: Family) -> bool:
        cat, opts = self.costs.catalog, self.options
        tiers = fam.tiers[:1] if fam.kind == "offload" else fam.tiers  # offload: the attention tier has tp 1
        return all(t == min_tp(self.costs.model, cat[hw], opts.max_num_batched_tokens, self._longest())
                   for hw, t in zip(tiers, fam.tps))

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

    def estimate(self, fam: Family) -> tuple[int, ...] | None:
        """The family's sizes as estimated from the trace (not a bound): the load bounds, with the
        prefill pool (colocated: the pool, its decode load included) grown until its queue meets the
        ttft bounds (LoadBounds.prefill_for_ttft). None: no size up to max_replicas does."""
        floor = self.lower_bounds(fam)
        ttft = tuple((PERCENTILES[k.split("_")[1]], v) for k, v in self.slo.checked if k.startswith("ttft"))
        if not ttft:
            return floor
        serving = self.costs.path_costs()
        entry = serving.colocated if fam.kind == "colocated" else serving.prefill
        hw, tp = fam.tiers[0], fam.tps[0]
        decode = self.bounds.decode_tokens / self.bounds.decode_rate(hw, tp) / self.bounds.duration \
            if fam.kind == "colocated" else 0.0
        n = self.bounds.prefill_for_ttft(hw, tp, ttft, entry.latency_s, entry.busy_s, decode,
                                         self.options.max_replicas)
        return None if n is None else (max(n, floor[0]),) + floor[1:]

    def promise(self, fam: Family) -> tuple[float, float]:
        """The order families are searched in: estimated cost (estimate), then the bound's cost."""
        sizes = self.estimate(fam)
        return (math.inf if sizes is None else self.cost(fam, sizes), self.cost(fam, self.lower_bounds(fam)))

    def hopeless(self, fam: Family) -> str | None:
        """Why no size of the family can meet the SLO, from one request alone: a decode step of one
        sequence slower than a TBT/TPOT bound, or the pXX prompt's prefill alone slower than a
        ttft_pXX bound (serving costs included)."""
        decode = None if fam.kind == "offload" else self.costs.replica(fam.tiers[-1], fam.tps[-1])
        prefill = self.costs.replica(fam.tiers[0], fam.tps[0])
        serving = self.costs.path_costs()
        entry = serving.colocated if fam.kind == "colocated" else serving.prefill
        budget = self.options.max_num_batched_tokens
        for key, limit in self.slo.checked:
            metric, pct = key.split("_")
            if metric in ("tbt", "tpot") and decode is not None:
                _, a, b = decode.decode_pieces(1)[0]
                step = a + b * self.bounds.mean_context
                if step > limit:
                    return f"a decode step alone takes {step * 1e3:.3g} ms > {key}"
            if metric == "ttft":
                prompt = int(np.percentile(self.trace.prompt_tokens, PERCENTILES[pct]))
                alone = sum(prefill.seconds(prefill_work(min(budget, prompt - done), done, 1))
                            for done in range(0, prompt, budget)) + entry.latency_s
                if alone > limit:
                    return f"its {pct} prompt's prefill alone takes {alone:.3g} s > {key}"
        return None

    def cost(self, fam: Family, sizes: tuple[int, ...]) -> float:
        return self.design(fam, sizes).cost_per_hour(self.costs.catalog)

    def evaluate(self, fam: Family, sizes: tuple[int, ...], trace: Trace | None = None) -> Candidate:
        trace = trace or self.trace
        key = (fam, sizes, id(trace))
        if key not in self._cache:
            design = self.design(fam, sizes)
            self.progress(design.label())
            self._add(key, design, simulate(design, trace, self.costs, self.slo))
        return self._cache[key]

    def passes(self, fam: Family, sizes: tuple[int, ...], trace: Trace | None = None) -> bool:
        """Whether the design meets the SLO on ``trace``: ``evaluate(...).passed``, but a run that
        misses the SLO stops as soon as that is certain (slo_watch.py; a run that passes is whole
        and cached as ``evaluate``'s)."""
        trace = trace or self.trace
        key = (fam, sizes, id(trace))
        if key in self._cache:
            return self._cache[key].passed
        if key not in self._missed:
            design = self.design(fam, sizes)
            self.progress(design.label())
            result = verdict(design, trace, self.costs, self.slo)
            if result is None:
                self._missed.add(key)
                self.stopped += 1
                return False
            self._add(key, design, result)
            return self._cache[key].passed
        return False

    def _add(self, key: tuple, design: Design, result: SimResult) -> None:
        fam, sizes, trace_id = key
        self._cache[key] = Candidate(fam, sizes, design, result, badness(result, self.slo))
        if trace_id == id(self.trace):
            self.evaluated.append(self._cache[key])

    # ---- the search
    def plan(self) -> Plan:
        """Search every family on the head (cheapest bound first, pruned by cost), confirm on the
        whole trace each family's best that can still beat the best confirmed design, shrink the
        winner there, and measure its band.

        A family's search is limited by the cheapest confirmed best of its kind found before it
        (larger tps: of any kind). A best is confirmed only when a cost comparison needs its
        confirmed cost (at least its head cost: a rerun only grows a design) or when it could still
        win, so the plan is the one that confirms every family's best, with fewer whole-trace runs."""
        start, wall = time.process_time(), time.perf_counter()  # CPU time: a busy machine must not cut the search short
        budget = self.options.time_budget_s
        fams, skipped = self.families()
        fams.sort(key=self.promise)  # most promising first: a time budget cuts the least promising
        found: list[_Found] = []
        for i, fam in enumerate(fams):
            if budget is not None and time.process_time() - start > 0.6 * budget:
                skipped.append(f"{len(fams) - i} families not searched within the time budget ({budget:g} CPU s)")
                break
            within = partial(self._below_confirmed, list(found), fam.kind if self._smallest_tp(fam) else None)
            if self.hopeless(fam) or not within(self.cost(fam, self.lower_bounds(fam))):  # hopeless first: cheap
                continue
            best = search_family(self, fam, within, self.trace)
            if best is not None:
                found.append(_Found(fam, best, self._cost(best)))
        whole = len(self.full) != len(self.trace)
        for f in sorted(found, key=lambda f: f.head_cost):  # those that could still win (all: nothing to rerun)
            if whole and f.head_cost > self._best_confirmed(found):
                break
            self._resolve(f)
        unconfirmed = [f.head for f in found if not f.resolved]
        if unconfirmed:
            skipped.append(f"rerunning {len(unconfirmed)} family bests on the whole trace (on the head they "
                           "already cost more than the best design confirmed there)")
        bests = sorted((f.confirmed for f in found if f.confirmed is not None), key=self._cost)
        if bests and whole:
            bests[0] = self._shrink_on_full(bests[0])
            bests.sort(key=self._cost)
        spread = None
        if bests and self.options.prior is not None:
            spread = band(bests[0].design, self.full, self.base_costs, self.slo, self.options.prior, steps=4)
        return Plan(bests[0] if bests else None, tuple(bests), tuple(self.evaluated), tuple(skipped), spread,
                    time.process_time() - start, tuple(sorted(unconfirmed, key=self._cost)), self.stopped,
                    time.perf_counter() - wall)

    def _cost(self, cand: Candidate) -> float:
        return cand.design.cost_per_hour(self.costs.catalog)

    def _best_confirmed(self, found: list[_Found]) -> float:
        return min((self._cost(f.confirmed) for f in found if f.confirmed is not None), default=math.inf)

    def _resolve(self, f: _Found) -> None:
        if not f.resolved:
            f.confirmed, f.resolved = self._confirm(f.family, f.head), True

    def _below_confirmed(self, found: list[_Found], kind: str | None, cost: float) -> bool:
        """Whether ``cost`` is below every confirmed best in ``found`` of ``kind`` (None: of any kind),
        confirming those whose head cost does not settle it."""
        for f in sorted(found, key=lambda f: f.head_cost):
            if kind is not None and f.family.kind != kind:
                continue
            if f.head_cost > cost:
                break  # confirmed costs are at least head costs: this one and the rest are above ``cost``
            self._resolve(f)
            if f.confirmed is not None and self._cost(f.confirmed) <= cost:
                return False
        return True

    def _confirm(self, fam: Family, cand: Candidate) -> Candidate | None:
        """Rerun on the whole trace; if it fails there, keep growing on the whole trace."""
        if len(self.full) == len(self.trace):
            return cand
        full = self.evaluate(fam, cand.sizes, self.full)
        return full if full.passed else search_family(self, fam, math.inf, self.full, start=cand.sizes)

    def _shrink_on_full(self, cand: Candidate) -> Candidate:
        """The winner searched on the trace's head may be larger than the whole trace needs (a
        prompt-heavy head): shrink and trade its pools on the whole trace too."""
        full = Planner(self.full, self.base_costs, self.slo, replace(self.options, search_requests=len(self.full)))
        floor = full.lower_bounds(cand.family)
        smaller = shrink(self, cand.family, list(cand.sizes), floor, self.full)
        return trade(self, cand.family, smaller, self.full)
