"""The simulated cluster: memory limits, rejections, prefix caching, interference, links, cost and energy."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.costs import CostModels
from simulator.decode_batch import DecodeBatch
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.links import Link, LinkTable
from simulator.metrics import summarize
from simulator.report import results_table
from simulator.run import simulate
from simulator.simulation import Simulation
from simulator.traces.load import load_trace
from simulator.traces.trace import make_trace


def peak_usage(requests, replica) -> tuple[int, int]:
    """Most KV tokens and sequences in ``replica``'s decode batch at once, from request times."""
    events = []
    for r in requests:
        if r.decode_replica is replica and r.first_decode_at >= 0:
            need = r.prompt + r.output
            events += [(r.first_decode_at - r.first_step_s, 1, need), (r.finish_at, -1, -need)]
    tokens = seqs = peak_tokens = peak_seqs = 0
    for _, ds, dt in sorted(events, key=lambda e: (e[0], e[1])):
        seqs, tokens = seqs + ds, tokens + dt
        peak_seqs, peak_tokens = max(peak_seqs, seqs), max(peak_tokens, tokens)
    return peak_tokens, peak_seqs


def test_decode_memory_and_batch_limits_hold_under_overload(costs: CostModels) -> None:
    """Reserved admission (the trace's output lengths known): reservations never exceed memory."""
    trace = load_trace("synthetic:n=1500,rate=40,prompt=lognormal:3000:0.5,output=lognormal:300:0.5,seed=2")
    design = Design(prefill=PoolSpec("H100", 2), decode=PoolSpec("L4", 2, max_num_seqs=24),
                    kv_admission="reserve_output")
    record = Simulation(design, costs, trace).run()
    assert record.rejected == 0 and all(r.finish_at > r.arrival for r in record.requests)
    assert record.preemptions == 0
    for replica in record.replicas["decode"]:
        tokens, seqs = peak_usage(record.requests, replica)
        assert 0 < tokens <= replica.kv_capacity
        assert seqs <= 24
        assert replica.kv_used == 0
    assert all(r.kv_used == 0 for r in record.replicas["prefill"])


@pytest.mark.parametrize("pools", [
    {"prefill": PoolSpec("H100", 2), "decode": PoolSpec("L4", 2, max_num_seqs=24)},
    {"colocated": PoolSpec("L4", 2, max_num_seqs=24)}])
def test_on_demand_kv_preempts_and_never_exceeds_memory(costs: CostModels, pools: dict, monkeypatch) -> None:
    """On demand (output lengths unknown): every step's KV fits; when it would not, the most recently
    joined sequence is preempted and recomputes; every request still finishes with its tokens."""
    checked = {"steps": 0}
    run, step = DecodeBatch._run, DecodeBatch.step

    def checked_run(self, m, *series):
        assert self.context + (m - 1) * self.batch <= self.limit()
        checked["steps"] += m
        return run(self, m, *series)

    def checked_step(self, seconds):
        assert self.batch == 0 or self.context <= self.limit()
        return step(self, seconds)
    monkeypatch.setattr(DecodeBatch, "_run", checked_run)
    monkeypatch.setattr(DecodeBatch, "step", checked_step)
    trace = load_trace("synthetic:n=600,rate=40,prompt=lognormal:3000:0.5,output=lognormal:300:0.5,seed=2")
    record = Simulation(Design(**pools), costs, trace).run()
    assert record.rejected == 0 and record.preemptions > 0 and checked["steps"] > 0
    assert all(r.finish_at > r.ttft_at > r.arrival and r.generated == r.output for r in record.requests)
    for replica in record.replicas.get("decode", record.replicas.get("colocated")):
        assert replica.kv_used == 0 and replica.batch.context == 0 and not replica.queue
    result = summarize(record, None, costs.catalog)
    # every decode token has a gap: in segments, or a recompute's token (a long one)
    assert result.samples.tbt.count == sum(r.output - 1 for r in record.requests)
    assert len(record.extra_gaps) >= record.preemptions > 0


def test_requests_longer_than_memory_are_rejected_not_stuck(costs: CostModels) -> None:
    trace = make_trace("one too long", [0.0, 0.1, 0.2], [1000, 600_000, 2000], [10, 10, 10])
    result = simulate(Design(colocated=PoolSpec("H100", 1)), trace, costs)
    assert (result.completed, result.rejected) == (2, 1)


def test_prefix_aware_routing_finds_more_cache_hits(costs: CostModels) -> None:
    spec = "synthetic:n=2000,rate=30,prompt=fixed:256,output=fixed:20,prefix_groups=16,prefix_tokens=2048,block=64"
    trace = load_trace(spec)
    results = {router: simulate(Design(prefill=PoolSpec("H100", 4), decode=PoolSpec("H100", 2), router=router),
                                trace, costs) for router in ("round_robin", "prefix_aware")}
    no_cache = simulate(Design(prefill=PoolSpec("H100", 4), decode=PoolSpec("H100", 2), prefix_caching=False),
                        trace, costs)
    assert results["prefix_aware"].prefix_hit_rate > results["round_robin"].prefix_hit_rate > 0.5
    assert no_cache.prefix_hit_rate == 0
    assert results["prefix_aware"].percentiles["ttft_p50"] < no_cache.percentiles["ttft_p50"]


def test_colocated_prefill_chunks_stretch_decode_steps(costs: CostModels) -> None:
    trace = load_trace("synthetic:n=3000,rate=12,workload=conversation,seed=1")
    colocated = simulate(Design(colocated=PoolSpec("H100", 4)), trace, costs)
    split = simulate(Design(prefill=PoolSpec("H100", 2), decode=PoolSpec("H100", 2)), trace, costs)
    assert colocated.percentiles["tbt_p99"] > 2 * split.percentiles["tbt_p99"]


def test_a_slow_link_delays_the_first_decode_token(costs: CostModels) -> None:
    trace = load_trace("synthetic:n=500,rate=5,prompt=fixed:4000,output=fixed:50")
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1))
    one_gbps = LinkTable(costs.catalog, {("H100", "H100"): Link(1e9 / 8, 1e-3)})
    slow = CostModels(costs.model, costs.catalog, links=one_gbps)
    gap = {}
    for name, models in (("fast", costs), ("slow", slow)):
        reqs = Simulation(design, models, trace).run().requests
        gap[name] = np.mean([r.first_decode_at - r.ttft_at for r in reqs])
    kv_seconds_at_1gbps = 4000 * costs.model.kv_bytes_per_token / (1e9 / 8)
    assert gap["slow"] > kv_seconds_at_1gbps > 10 * gap["fast"]


def test_offloaded_decode_holds_kv_on_the_attention_pool(costs: CostModels) -> None:
    trace = make_trace("long", [0.0], [400_000], [20])
    small = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 2), attention=PoolSpec("H20", 1))
    large = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 2), attention=PoolSpec("H20", 4))
    assert simulate(small, trace, costs).rejected == 1  # half an H20 (48 GB) per decode replica
    result = simulate(large, trace, costs)
    assert result.rejected == 0 and 0 < result.utilization["attention"] <= 1


def test_cost_and_energy_accounting(costs: CostModels) -> None:
    trace = load_trace("synthetic:n=800,rate=6,workload=conversation")
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("L40S", 2))
    record = Simulation(design, costs, trace).run()
    r = summarize(record, None, costs.catalog)
    generated = float(trace.output_tokens.sum())
    assert r.cost_per_hour == pytest.approx(2.99 + 2 * 1.86)
    # the cluster is paid from the first arrival until the last request finishes
    paid_hours = (max(q.finish_at for q in record.requests) - trace.arrival_s[0]) / 3600
    assert r.usd_per_mtok == pytest.approx((2.99 + 2 * 1.86) * paid_hours / (generated / 1e6))
    idle_w = 0.25 * (700 + 2 * 350)
    assert generated / (r.duration_s * 1400) < r.tokens_per_joule < generated / (r.duration_s * idle_w)
    assert 0 < r.utilization["prefill"] < 1 and 0 < r.utilization["decode"] <= 1


def test_colocated_util_is_kv_in_use_not_busy_share(costs: CostModels) -> None:
    """A colocated engine is busy whenever a sequence decodes, so its busy share is ~100% at any load;
    "util" shows its KV memory in use, as for decode pools: running sequences' context over capacity,
    time-averaged (checked against the requests' own times: prompt + half the output held from the
    first token to the last)."""
    shown = []
    for rate in (5.4, 20):
        trace = load_trace(f"synthetic:n=800,rate={rate},workload=conversation,seed=1")
        record = Simulation(Design(colocated=PoolSpec("H100", 1)), costs, trace).run()
        r = summarize(record, None, costs.catalog)
        held = sum((q.finish_at - q.ttft_at) * (q.prompt + q.output / 2) for q in record.requests if q.finish_at >= 0)
        capacity = record.replicas["colocated"][0].kv_capacity
        assert r.utilization["colocated"] > 0.99  # busy throughout either way
        assert r.kv_utilization["colocated"] == pytest.approx(held / capacity / r.duration_s, rel=0.05)
        table = results_table([r], "t")
        shown.append(table.columns[-1].cells)
    assert [list(c) for c in shown] == [["colo=kv 3.6%"], ["colo=kv 58%"]]


def test_a_model_that_does_not_fit_is_a_clear_error(costs_70b: CostModels) -> None:
    trace = make_trace("one", [0.0], [100], [10])
    with pytest.raises(SimInputError, match="llama-3-70b does not fit on 2xH100 with tp=1"):
        simulate(Design(colocated=PoolSpec("H100", 2)), trace, costs_70b)
    assert simulate(Design(colocated=PoolSpec("H100", 2, tp=4)), trace, costs_70b).completed == 1
