"""Published headline results, reproduced in direction: Splitwise (phase splitting, ISCA'24) and
Lamina (attention offloading). Our numbers come from our catalog and model, so only the
direction is expected to match; the paper's numbers are printed beside ours."""

from __future__ import annotations

import numpy as np

from simulator.capacity import highest_scale
from simulator.costs import CostModels, min_tp
from simulator.design import Design, PoolSpec
from simulator.operators import decode_work, prefill_work
from simulator.planner import Family, Planner, PlanOptions
from simulator.search import search_family
from simulator.simulation import Simulation
from simulator.slo import SLO
from simulator.traces.synthetic import parse_synthetic, synthetic_trace
from simulator.traces.trace import Trace
from simulator.validation import Table

SPLITWISE = ("Splitwise (Patel et al., ISCA 2024, arXiv:2311.18677): 'up to 1.4x higher throughput at 20% lower "
             "cost', '2.35x more throughput under the same power and cost budgets' (Llama2-70B, BLOOM-176B; "
             "DGX-H100 prompt machines, DGX-A100 or DGX-H100 token machines)")
LAMINA = ("Lamina (Chen et al., arXiv:2405.01814): '1.48x-12.1x higher estimated throughput per dollar than "
          "homogeneous solutions' (attention on memory-optimized devices, the rest on H100)")


def slowdown_slo(costs: CostModels, reference: str, tp: int, prompt: int, context: int) -> SLO:
    """Splitwise-style SLO on absolute percentiles: p99 TTFT within 6x and p99 TBT within 5x of a
    request alone on ``reference`` (the Lamina comparison's; Splitwise's own is ``SplitwiseSLO``)."""
    cost = costs.replica(reference, tp)
    return SLO((("ttft_p99", 6 * cost.seconds(prefill_work(prompt, 0, 1))),
                ("tbt_p99", 5 * cost.seconds(decode_work(1, context)))))


# Splitwise's SLO (splitwise-sim notebooks/plots.ipynb get_slo; paper Table on SLOs): per-request
# slowdowns against the same request alone on a DGX-A100 (tp 8), at p50 / p90 / p99. TBT is the
# request's mean gap, (end-to-end - TTFT) / output tokens (splitwise-sim scheduler.py); the alone
# E2E is TTFT + TBT x (output - 1).
SPLITWISE_SLOWDOWNS = {"ttft": (2.0, 3.0, 6.0), "tbt": (1.25, 1.5, 5.0), "e2e": (1.25, 1.5, 5.0)}
SPLITWISE_QUANTILES = (50.0, 90.0, 99.0)
# splitwise-sim's baseline and Splitwise instances (configs/start_state/baseline.yaml, splitwise.yaml):
# iteration-level mixed batching of whole prompts and running decodes, at most 2048 tokens and 512
# sequences per iteration, tp 8 per 8-GPU machine.
SPLITWISE_BATCH_TOKENS, SPLITWISE_BATCH_SEQS = 2048, 512


class SplitwiseSLO:
    """Per-request slowdowns against ``reference`` (tp ``tp``) running the request alone."""

    def __init__(self, costs: CostModels, reference: str = "A100-80G", tp: int = 8) -> None:
        self.cost = costs.replica(reference, tp)
        self.reference, self.tp = reference, tp
        self._ttft: dict[int, float] = {}

    def alone(self, prompt: int, output: int) -> tuple[float, float, float]:
        """(TTFT, mean TBT, E2E) of a request alone on the reference."""
        ttft = self._ttft.get(prompt)
        if ttft is None:
            ttft = self._ttft[prompt] = self.cost.seconds(prefill_work(prompt, 0, 1))
        tbt = self.cost.seconds(decode_work(1, prompt + max(output, 1) // 2))
        return ttft, tbt, ttft + tbt * max(output - 1, 0)

    def slowdowns(self, record) -> dict[str, np.ndarray]:
        done = [r for r in record.requests if r.finish_at >= 0]
        lat = record.client_latency_s
        out = {k: np.empty(len(done)) for k in SPLITWISE_SLOWDOWNS}
        for i, r in enumerate(done):
            ttft_ref, tbt_ref, e2e_ref = self.alone(r.prompt, r.output)
            ttft, e2e = r.ttft_at - r.arrival + lat, r.finish_at - r.arrival + lat
            out["ttft"][i] = ttft / ttft_ref
            out["tbt"][i] = (e2e - ttft) / max(r.output, 1) / tbt_ref
            out["e2e"][i] = e2e / e2e_ref
        return out

    def meets(self, record) -> bool:
        if record.rejected or not record.requests:
            return False
        slow = self.slowdowns(record)
        return all(float(np.percentile(slow[k], q)) <= limit for k, limits in SPLITWISE_SLOWDOWNS.items()
                   for q, limit in zip(SPLITWISE_QUANTILES, limits))

    def text(self) -> str:
        return ("per-request slowdown vs alone on " + f"{self.reference}(tp{self.tp}) at p50/p90/p99: " +
                ", ".join(f"{k} {'/'.join(f'{v:g}' for v in lim)}x" for k, lim in SPLITWISE_SLOWDOWNS.items()))


def splitwise_rate(design: Design, trace: Trace, costs: CostModels, slo: SplitwiseSLO, steps: int = 6) -> float:
    """The highest request rate (trace replayed faster or slower) that meets Splitwise's SLO
    (capacity.max_rate's search, this SLO)."""
    def meets(scale: float) -> bool:
        return slo.meets(Simulation(design, costs, trace.scaled(scale)).run())

    return highest_scale(meets, steps) * trace.rate


def splitwise(costs: CostModels, machines: int = 8, requests: int = 1500, tp: int = 8,
              workload: str = "conversation") -> Table:
    """Iso-cost and iso-power, as the paper compares: a colocated H100 cluster of ``machines``
    8-GPU machines (its baseline: mixed batching of whole prompts with running decodes, 2048
    tokens per iteration, as splitwise-sim's) against split H100/H100 and H100/A100 clusters that
    fit the same $/hour and watts, each at the highest rate meeting Splitwise's SLO (``SplitwiseSLO``).

    Our colocated engine always runs its decodes and fills the rest of the 2048 tokens with
    prompt tokens, chunking a prompt that does not fit (splitwise-sim runs prompts first and whole,
    pausing decodes that do not fit); two reference rows that the paper does not have: a
    Sarathi-style 512-token chunked baseline, and 8192-token iterations (several whole prompts per
    iteration, the comparison's baseline before 2026-12). The paper's clusters have ~40 machines;
    8 is the fewest here that leaves the pool ratio room (with 4, iso-power allows one A100 token
    machine beside 3 H100 prompt machines and Splitwise-HA falls to 0.66x)."""
    cat = costs.catalog
    trace = synthetic_trace(parse_synthetic(f"synthetic:n={requests},rate=1,workload={workload},seed=11"))
    slo = SplitwiseSLO(costs, "A100-80G", tp)

    def colocated(tokens: int) -> Design:
        return Design(colocated=PoolSpec("H100", machines, tp, SPLITWISE_BATCH_SEQS, tokens))

    base = colocated(SPLITWISE_BATCH_TOKENS)
    budget_usd, budget_w = base.cost_per_hour(cat), base.peak_watts(cat)
    rows = [_best("Baseline-H100 (mixed batching, 2048 tokens, as in the paper)", [base], trace, costs, slo),
            _best("Baseline-H100 chunked prefill, 512 tokens (not in the paper)", [colocated(512)], trace, costs, slo),
            _best("Baseline-H100, 8192-token iterations (not in the paper)", [colocated(8192)], trace, costs, slo)]
    for name, decode_hw in (("Splitwise-HH", "H100"), ("Splitwise-HA", "A100-80G")):
        rows.append(_best(name, _splits(decode_hw, machines, tp, budget_usd, budget_w, costs), trace, costs, slo))
    base_rate, base_usd = rows[0][4], rows[0][2]
    table = tuple((*r[:5], r[4] / base_rate, r[4] / r[2] / (base_rate / base_usd)) for r in rows)
    hh, ha = table[3], table[4]
    # Phase splitting serves more per $ than the paper's baseline, and not more than the paper's
    # largest gain (2.35x) allows: our 3.5-3.9x before 2026-12 came from another SLO and baseline.
    ok = base_rate > 0 and all(1.0 < r[6] <= 2.6 for r in (hh, ha))
    return Table(f"Splitwise direction: {workload}, {costs.model.name}, iso-cost ${budget_usd:.0f}/h and iso-power "
                 f"{budget_w / 1e3:.1f} kW, SLO {slo.text()}",
                 ("cluster", "design", "$/hour", "kW", "req/s within SLO", "throughput vs baseline",
                  "throughput per $ vs baseline"), table, ok,
                 f"paper: {SPLITWISE}. Ours, against the paper's baseline: throughput {hh[5]:.2f}x (HH), "
                 f"{ha[5]:.2f}x (HA); per $ {hh[6]:.2f}x, {ha[6]:.2f}x. 512-token chunks: {table[1][5]:.2f}x; "
                 f"8192-token iterations: {table[2][5]:.2f}x.")


def _splits(decode_hw: str, machines: int, tp: int, usd: float, watts: float, costs: CostModels) -> list[Design]:
    """For each prompt-machine count, the most token machines within the cost and power budget."""
    def pool(hw: str, n: int) -> PoolSpec:
        return PoolSpec(hw, n, tp, SPLITWISE_BATCH_SEQS, SPLITWISE_BATCH_TOKENS)

    designs = []
    for p in range(1, machines):
        d = 0
        while _fits(Design(prefill=pool("H100", p), decode=pool(decode_hw, d + 1)), usd, watts, costs):
            d += 1
        if d:
            designs.append(Design(prefill=pool("H100", p), decode=pool(decode_hw, d)))
    return designs


def _fits(design: Design, usd: float, watts: float, costs: CostModels) -> bool:
    return design.cost_per_hour(costs.catalog) <= usd + 1e-9 and design.peak_watts(costs.catalog) <= watts + 1e-9


def _best(name: str, designs: list[Design], trace: Trace, costs: CostModels, slo: SplitwiseSLO) -> tuple:
    rated = [(splitwise_rate(d, trace, costs, slo), d) for d in designs]
    rate, d = max(rated, key=lambda x: x[0])
    return (name, d.label(), d.cost_per_hour(costs.catalog), d.peak_watts(costs.catalog) / 1e3, rate)


def lamina(costs: CostModels, rate: float = 8.0, requests: int = 800, attention: str = "H20") -> Table:
    """Decode throughput per dollar at a fixed load: the cheapest decode pool that meets the SLO
    behind the same H100 prefill pool, homogeneous H100 against H100 with attention offloaded to
    ``attention`` (Lamina compares the decode phase, so the shared prefill pool's cost is left out)."""
    trace = synthetic_trace(parse_synthetic(f"synthetic:n={requests},rate={rate},workload=long-context,seed=5"))
    slo = slowdown_slo(costs, "H100", 8, 8192, 8192)
    planner = Planner(trace, costs, slo, PlanOptions(search_requests=requests))
    longest = int((trace.prompt_tokens + trace.output_tokens).max())
    tp = min_tp(costs.model, costs.catalog["H100"], 8192, 8 * longest)  # a replica holds a batch of them
    families = {"homogeneous H100 decode": Family("disaggregated", ("H100", "H100"), (tp, tp)),
                f"H100 decode + {attention} attention": Family("offload", ("H100", attention), (tp, tp, 1))}
    rows = []
    for name, fam in families.items():
        cand = search_family(planner, fam, float("inf"), trace)
        pools = cand.design.pools()
        usd = sum(p.devices * costs.catalog[p.hardware].usd_per_hour for n, p in pools.items() if n != "prefill")
        rows.append((name, cand.design.label(), usd, cand.result.goodput_rps / usd))
    table = tuple((*r, r[3] / rows[0][3]) for r in rows)
    return Table(f"Lamina direction: long-context decode, {costs.model.name}, {trace.rate:.2f} req/s, SLO {slo.text()}",
                 ("decode side", "cheapest design within SLO", "decode $/hour", "req/s per decode $/hour",
                  "vs homogeneous"), table, table[1][4] > 1.0, f"paper: {LAMINA}. Ours: {table[1][4]:.2f}x")
