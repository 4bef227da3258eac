"""Checks that the simulator agrees with what it should: operator sums, queueing theory,
monotonicity and seeded reproducibility. Each returns a table; tests assert on the same tables
and `tierserve simulate --validate` prints them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.operators import decode_work, prefill_work
from simulator.roofline import RooflineCost
from simulator.run import simulate
from simulator.simulation import Simulation
from simulator.traces.synthetic import parse_synthetic, synthetic_trace
from simulator.traces.trace import make_trace


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    passed: bool
    note: str = ""


def op_sum_prefill(cost: RooflineCost, prompt: int, chunk: int) -> float:
    """Seconds of a lone prompt computed in chunks, summing each operator's roofline time."""
    total, done = 0.0, 0
    while done < prompt:
        n = min(chunk, prompt - done)
        total += sum(cost.op_seconds(op) for op in cost.ops(prefill_work(n, done, int(done + n == prompt))))
        done += n
    return total


def op_sum_decode(cost: RooflineCost, prompt: int, output: int) -> float:
    """Seconds of output - 1 decode steps of a lone sequence, operator by operator."""
    return sum(sum(cost.op_seconds(op) for op in cost.ops(decode_work(1, prompt + 1 + j)))
               for j in range(output - 1))


def single_request(costs: CostModels, hardware: str = "H100", prompt: int = 3000, output: int = 50,
                   chunk: int = 1024) -> Table:
    """One request alone: simulated TTFT and end-to-end time against the operator sums."""
    trace = make_trace("one request", [0.0], [prompt], [output])
    cost = costs.replica(hardware, 1)
    prefill_s, decode_s = op_sum_prefill(cost, prompt, chunk), op_sum_decode(cost, prompt, output)
    pool = PoolSpec(hardware, 1, max_num_batched_tokens=chunk)
    rows = []
    colocated = Simulation(Design(colocated=pool), costs, trace).run().requests[0]
    rows.append(("colocated TTFT", colocated.ttft_at, prefill_s))
    rows.append(("colocated end-to-end", colocated.finish_at, prefill_s + decode_s))
    split = Design(prefill=pool, decode=pool, layerwise_transfer=False)
    req = Simulation(split, costs, trace).run().requests[0]
    transfer = costs.links.between(hardware, hardware).seconds(prompt * costs.model.kv_bytes_per_token)
    rows.append(("disaggregated TTFT", req.ttft_at, prefill_s))
    rows.append(("disaggregated end-to-end", req.finish_at, prefill_s + transfer + decode_s))
    rows = tuple((name, sim, ref, abs(sim - ref) / ref) for name, sim, ref in rows)
    return Table(f"single request ({prompt} prompt, {output} output tokens, {hardware}): simulated = operator sum",
                 ("quantity", "simulated (s)", "sum of operators (s)", "relative error"), rows,
                 all(r[3] < 1e-9 for r in rows))


def md1(costs: CostModels, loads: tuple[float, ...] = (0.3, 0.6, 0.8), n: int = 20000, seed: int = 0,
        hardware: str = "H100", prompt: int = 2048, tolerance: float = 0.08) -> Table:
    """One prefill server, one request per iteration, fixed prompts, Poisson arrivals: an M/D/1
    queue, whose mean wait is rho * D / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    service = costs.replica(hardware, 1).seconds(prefill_work(prompt, 0, 1))
    design = Design(prefill=PoolSpec(hardware, 1, max_num_seqs=1), decode=PoolSpec(hardware, 2))
    rows = []
    for rho in loads:
        spec = parse_synthetic(f"synthetic:n={n},rate={rho / service},prompt=fixed:{prompt},output=fixed:2,seed={seed}")
        reqs = Simulation(design, costs, synthetic_trace(spec)).run().requests
        wait = float(np.mean([r.ttft_at - r.arrival for r in reqs])) - service
        theory = rho * service / (2 * (1 - rho))
        rows.append((rho, wait, theory, abs(wait - theory) / theory))
    return Table(f"M/D/1: mean queueing delay at one prefill server (D = {service * 1e3:.2f} ms, {n} requests)",
                 ("load rho", "simulated wait (s)", "M/D/1 wait (s)", "relative error"), tuple(rows),
                 all(r[3] < tolerance for r in rows))


def monotonic(costs: CostModels, trace_spec: str = "synthetic:n=3000,rate=12,workload=conversation,seed=3",
              hardware: str = "H100") -> Table:
    """Latency grows with load and shrinks with capacity."""
    trace = synthetic_trace(parse_synthetic(trace_spec))
    rows = []
    for scale in (0.5, 1.0, 2.0, 4.0):
        r = simulate(Design(prefill=PoolSpec(hardware, 1), decode=PoolSpec(hardware, 1)), trace.scaled(scale), costs)
        rows.append((f"load x{scale:g}, 1+1 replicas", r.percentiles["ttft_p50"], r.percentiles["e2e_p50"]))
    for n in (2, 4):
        r = simulate(Design(prefill=PoolSpec(hardware, n), decode=PoolSpec(hardware, n)), trace.scaled(4.0), costs)
        rows.append((f"load x4, {n}+{n} replicas", r.percentiles["ttft_p50"], r.percentiles["e2e_p50"]))
    load, size = rows[:4], rows[3:]
    ok = all(a[i] <= b[i] for i in (1, 2) for a, b in zip(load, load[1:])) and \
        all(a[i] >= b[i] for i in (1, 2) for a, b in zip(size, size[1:]))
    return Table("monotonicity: median TTFT and end-to-end latency", ("run", "TTFT p50 (s)", "e2e p50 (s)"),
                 tuple(rows), ok)


def reproducible(costs: CostModels, hardware: str = "H100") -> Table:
    """The same seed gives identical results; another seed gives another trace and other numbers."""
    def run(seed: int) -> dict[str, float]:
        trace = synthetic_trace(parse_synthetic(f"synthetic:n=2000,rate=15,arrival=gamma:2,seed={seed}"))
        return simulate(Design(colocated=PoolSpec(hardware, 2)), trace, costs).percentiles

    a, b, c = run(7), run(7), run(8)
    rows = tuple((k, a[k], b[k], c[k]) for k in ("ttft_p99", "tbt_p99", "e2e_p99"))
    return Table("reproducibility: seed 7 twice, then seed 8", ("metric", "seed 7", "seed 7 again", "seed 8"),
                 rows, a == b and a != c)
