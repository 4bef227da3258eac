"""What a simulation run measured: throughput, latency percentiles, SLO attainment, cost, energy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.hardware import Catalog
from simulator.simulation import SimRecord
from simulator.slo import KEYS, PERCENTILES, SLO
from simulator.tbt import TokenGaps


@dataclass(frozen=True, eq=False)
class LatencySamples:
    """Per-request latencies (seconds) and token gaps, for CDF plots; ``gap_p90``: each request's p90
    token gap (NaN: no decode steps), where the run kept them (Simulation(request_gaps=True))."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    tbt: TokenGaps
    gap_p90: np.ndarray | None = None


@dataclass(frozen=True)
class SimResult:
    design: str
    kind: str
    completed: int
    rejected: int
    duration_s: float
    throughput_rps: float
    output_tps: float
    percentiles: dict[str, float]        # ttft_p50 ... e2e_p99, seconds
    slo_attainment: float                # share of requests meeting the per-request TTFT and TPOT bounds
    goodput_rps: float
    cost_per_hour: float
    usd_per_mtok: float                  # $ per million generated tokens
    tokens_per_joule: float              # generated tokens per joule
    utilization: dict[str, float]        # busy share per pool
    prefix_hit_rate: float               # prompt tokens served from the prefix cache
    preemptions: int = 0                 # decode sequences preempted (KV freed, recomputed later)
    samples: LatencySamples | None = field(default=None, repr=False, compare=False)
    kv_utilization: dict[str, float] = field(default_factory=dict)  # decode, colocated: mean KV in use / capacity

    def meets(self, slo: SLO) -> bool:
        return self.rejected == 0 and not slo.violations(self.percentiles)


def summarize(record: SimRecord, slo: SLO | None, catalog: Catalog) -> SimResult:
    done = [r for r in record.requests if r.finish_at >= 0]
    arrival = np.array([r.arrival for r in done])
    latency = record.client_latency_s  # every token reaches the client this much later
    ttft = np.array([r.ttft_at for r in done]) - arrival + latency
    finish = np.array([r.finish_at for r in done]) + latency
    outputs = np.array([r.output for r in done], dtype=np.float64)
    tpot = np.where(outputs > 1, (finish - arrival - ttft) / np.maximum(outputs - 1, 1), 0.0)
    gaps = TokenGaps.collect(record.segments, done, record.extra_gaps, record.step_jitter,
                             record.step_jitter_s)
    kept = record.gap_p90
    gap_p90 = None if kept is None else np.array([kept.get(r.index, np.nan) for r in done])
    samples = LatencySamples(ttft, tpot, finish - arrival, gaps, gap_p90)
    duration = float(finish.max() - record.trace.arrival_s[0]) if done else 0.0
    util = _utilization(record, duration)
    cost = record.design.cost_per_hour(catalog)
    generated = float(outputs.sum())
    met = _attained(samples, slo) if done else np.zeros(0, bool)
    energy = _energy_joules(record, catalog, util, duration)
    prompts = sum(r.prompt for r in done)
    return SimResult(
        design=record.design.label(), kind=record.design.kind, completed=len(done), rejected=record.rejected,
        duration_s=duration, throughput_rps=len(done) / duration if duration else 0.0,
        output_tps=generated / duration if duration else 0.0, percentiles=_percentiles(samples),
        slo_attainment=float(met.mean()) if len(met) else 0.0,
        goodput_rps=float(met.sum()) / duration if duration else 0.0, cost_per_hour=cost,
        usd_per_mtok=cost * duration / 3600 / (generated / 1e6) if generated else float("inf"),
        tokens_per_joule=generated / energy if energy else 0.0, utilization=util,
        prefix_hit_rate=sum(r.cached for r in done) / prompts if prompts else 0.0,
        preemptions=record.preemptions, samples=samples, kv_utilization=_kv_utilization(record, duration))


def _percentiles(s: LatencySamples) -> dict[str, float]:
    out = {}
    tbt = dict(zip(PERCENTILES, s.tbt.quantiles([q / 100 for q in PERCENTILES.values()])))
    for key in KEYS:
        metric, pct = key.split("_")
        if metric == "tbt":
            out[key] = tbt[pct]
        else:
            values = getattr(s, metric)
            out[key] = float(np.percentile(values, PERCENTILES[pct])) if len(values) else float("nan")
    return out


def _attained(s: LatencySamples, slo: SLO | None) -> np.ndarray:
    ok = np.ones(len(s.ttft), dtype=bool)
    for metric, values in (("ttft", s.ttft), ("tpot", s.tpot), ("e2e", s.e2e)):
        bound = slo.limit(metric) if slo else None
        if bound is not None:
            ok &= values <= bound
    return ok


def _utilization(record: SimRecord, duration: float) -> dict[str, float]:
    if duration <= 0:
        return {name: 0.0 for name in record.design.pools()}
    util = {name: float(np.mean([r.busy_total_s for r in reps])) / duration for name, reps in record.replicas.items()}
    if record.design.attention is not None:
        util["attention"] = float(np.mean([r.batch.attention_s for r in record.replicas["decode"]])) / duration
    return util


def _kv_utilization(record: SimRecord, duration: float) -> dict[str, float]:
    """A decode or colocated pool's KV memory in use (running sequences' context) over its capacity,
    time-averaged, its replicas' mean: what "util" shows for it, as its busy share is 100% whenever
    any sequence runs (a colocated engine steps its decode batch between prompts too)."""
    if duration <= 0:
        return {}
    return {name: float(np.mean([r.batch.kv_token_s / max(r.kv_capacity, 1) for r in reps])) / duration
            for name in ("colocated", "decode") if (reps := record.replicas.get(name))}


def _energy_joules(record: SimRecord, catalog: Catalog, util: dict[str, float], duration: float) -> float:
    total = 0.0
    for name, pool in record.design.pools().items():
        hw = catalog[pool.hardware]
        idle = hw.watts * hw.idle_power_fraction
        total += pool.devices * duration * (idle + (hw.watts - idle) * min(1.0, util.get(name, 0.0)))
    return total
