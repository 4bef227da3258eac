"""The planner: cheapest design within the SLO, local minimality, infeasible SLOs, cluster configs."""

from __future__ import annotations

import math

import pytest

from cluster.config import load_cluster_config
from simulator.cluster_config import cluster_config, write_cluster_config
from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.design_spec import design_from_config
from simulator.errors import SimInputError
from simulator.planner import Planner, PlanOptions
from simulator.search import search_family
from simulator.slo import parse_slo
from simulator.traces.load import load_trace
from simulator.traces.trace import make_trace

TRACE = "synthetic:n=1500,rate=15,workload=conversation,seed=6"


@pytest.fixture(scope="module")
def planned(costs: CostModels):
    slo = parse_slo("ttft_p99=1,tbt_p99=60ms")
    options = PlanOptions(hardware=("H100", "A100-80G", "L40S", "H20"))
    planner = Planner(load_trace(TRACE), costs, slo, options)
    return planner, planner.plan()


def test_plan_meets_the_slo_and_is_cheapest_of_its_family_bests(planned, costs: CostModels) -> None:
    planner, plan = planned
    assert plan.best is not None and plan.best.passed and plan.best.result.meets(planner.slo)
    cost = plan.best.design.cost_per_hour(costs.catalog)
    assert all(cost <= c.design.cost_per_hour(costs.catalog) for c in plan.family_bests)
    assert {c.design.kind for c in plan.family_bests} == {"colocated", "disaggregated", "offload"}
    assert all(c.passed for c in plan.family_bests)


def test_each_family_best_is_locally_minimal(planned) -> None:
    planner, plan = planned
    for cand in plan.family_bests:
        sizes = cand.sizes
        for i in range(len(sizes)):
            smaller = sizes[:i] + (sizes[i] - 1,) + sizes[i + 1:]
            if smaller[i] >= 1:
                assert not planner.evaluate(cand.family, smaller).passed, f"{cand.design.label()} could lose a replica"


def test_below_the_load_bounds_a_pool_saturates(costs: CostModels) -> None:
    trace = load_trace("synthetic:n=3000,rate=60,workload=conversation,seed=6")
    planner = Planner(trace, costs, parse_slo("ttft_p99=1"), PlanOptions(hardware=("H100",)))
    fam = next(f for f in planner.families()[0] if f.kind == "disaggregated")
    prefill, decode = planner.lower_bounds(fam)
    assert prefill >= 2
    below = planner.evaluate(fam, (prefill - 1, decode + 2))
    assert below.result.utilization["prefill"] > 0.9  # busy until its queue drains, after the last arrival
    enough = planner.evaluate(fam, (prefill, decode + 2))
    assert below.result.percentiles["ttft_p50"] > 10 * enough.result.percentiles["ttft_p50"]


def test_an_impossible_slo_has_no_plan(costs: CostModels) -> None:
    planner = Planner(load_trace(TRACE), costs, parse_slo("ttft_p99=1ms"),
                      PlanOptions(hardware=("H100",), kinds=("colocated",), max_replicas=4))
    assert planner.plan().best is None


def test_options_restrict_the_families(costs: CostModels) -> None:
    planner = Planner(load_trace(TRACE), costs, parse_slo("ttft_p99=1"), PlanOptions(hardware=("H100", "L4"),
                                                                                    kinds=("disaggregated",)))
    fams, _ = planner.families()
    assert {f.tiers for f in fams} == {("H100", "H100"), ("H100", "L4"), ("L4", "H100"), ("L4", "L4")}
    with pytest.raises(SimInputError, match="design kinds must be among"):
        PlanOptions(kinds=("pipeline",))


@pytest.mark.parametrize("design", [
    Design(colocated=PoolSpec("H100", 3, max_num_batched_tokens=4096)),
    Design(prefill=PoolSpec("H100", 2), decode=PoolSpec("L40S", 4, tp=2)),
])
def test_written_configs_of_servable_designs_load_in_the_cluster_loader(design: Design, costs: CostModels,
                                                                       tmp_path) -> None:
    path = write_cluster_config(tmp_path / "cluster.yaml", cluster_config(design, costs.model, costs.catalog))
    loaded = load_cluster_config(path)
    for name, pool in design.pools().items():
        assert loaded.pools[name].replicas == pool.replicas
        assert loaded.pools[name].hardware.accelerator_type == pool.hardware
        assert loaded.pools[name].hardware.num_gpus == pool.tp
    assert loaded.model == "meta-llama/Meta-Llama-3-8B"
    assert loaded.router.policy == "prefix-aware"


def test_routing_policy_round_trips_through_the_config(costs: CostModels, tmp_path) -> None:
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("L40S", 2), router="round_robin")
    path = write_cluster_config(tmp_path / "c.yaml", cluster_config(design, costs.model, costs.catalog))
    assert load_cluster_config(path).router.policy == "round-robin"
    assert design_from_config(path, costs.catalog) == design


def test_an_offload_design_writes_a_config_the_cluster_loader_serves(costs: CostModels, tmp_path) -> None:
    """The config written for an attention-offload design loads as is: its attention pool on its own
    hardware tier beside prefill and decode (the cluster pairs each decode replica with one)."""
    design = Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 2), attention=PoolSpec("CPU-DDR5", 3))
    config = cluster_config(design, costs.model, costs.catalog)
    assert config["plan"]["kind"] == "offload" and config["plan"]["hardware"]["attention"] == "CPU-DDR5"
    loaded = load_cluster_config(write_cluster_config(tmp_path / "cluster.yaml", config))
    assert loaded.offloaded and loaded.disaggregated
    assert loaded.pools["attention"].replicas == 3 and loaded.pools["attention"].hardware.num_gpus == 0
    assert loaded.pools["decode"].hardware.num_gpus == 1


def test_the_queue_estimate_of_a_prefill_pool(costs: CostModels) -> None:
    """LoadBounds.prefill_for_ttft (the planner's search order): at least the load bound, more
    replicas for a tighter bound or a higher percentile, none when the prompt at that percentile alone
    takes longer than the bound."""
    trace = load_trace("synthetic:n=3000,rate=60,workload=conversation,seed=6")
    bounds = Planner(trace, costs, parse_slo("ttft_p99=1"), PlanOptions(hardware=("H100",))).bounds
    estimate = lambda *ttft: bounds.prefill_for_ttft("H100", 1, ttft, 0.005, 0.01)  # noqa: E731
    loose, tight, p50 = estimate((99.0, 2.0)), estimate((99.0, 0.3)), estimate((50.0, 0.3))
    assert loose is not None and tight is not None and p50 is not None
    assert bounds.prefill("H100", 1) <= loose <= tight and p50 <= tight
    assert estimate((99.0, 0.001)) is None


def test_every_power_of_two_tp_that_fits_is_searched(costs_70b: CostModels) -> None:
    """Llama-3-70B needs tp >= 2 on an H100; the planner tries tp 2, 4 and 8 (the node's 8 GPUs), not only
    the smallest and its double. A TBT p99 of 14 ms needs tp8: a decode step of one sequence takes ~27 /
    16 / 11 ms at tp 2 / 4 / 8 (the roofline with tp all-reduces), so only tp8 decode pools can meet it."""
    trace = load_trace("synthetic:n=400,rate=2,workload=conversation,seed=1")
    slo = parse_slo("ttft_p99=2,tbt_p99=14ms")
    planner = Planner(trace, costs_70b, slo, PlanOptions(hardware=("H100",)))
    assert {f.tps for f in planner.families()[0] if f.kind == "colocated"} == {(2,), (4,), (8,)}
    plan = planner.plan()
    assert plan.best is not None and plan.best.passed and plan.best.design.pools()["decode"].tp == 8
    assert Planner(trace, costs_70b, slo, PlanOptions(hardware=("H100",), tp_choices=2)).plan().best is None


def test_a_larger_tp_on_a_cheaper_tier_wins(costs_70b: CostModels) -> None:
    """At a 20 ms TBT p99 an A100-80G decode pool needs tp8 (24 ms a step at tp4): 8 x $1.49 = $11.92 a
    replica, a little under the H100(tp4) decode replica ($11.96) the planner chose when it tried only tp 2
    and 4."""
    trace = load_trace("synthetic:n=400,rate=2,workload=conversation,seed=1")
    slo = parse_slo("ttft_p99=2,tbt_p99=20ms")
    hardware = ("H100", "A100-80G")
    two = Planner(trace, costs_70b, slo, PlanOptions(hardware=hardware, tp_choices=2)).plan().best
    every = Planner(trace, costs_70b, slo, PlanOptions(hardware=hardware)).plan().best
    assert two is not None and every is not None
    assert two.design.pools()["decode"].hardware == "H100" and two.design.pools()["decode"].tp == 4
    decode = every.design.pools()["decode"]
    assert (decode.hardware, decode.tp) == ("A100-80G", 8)
    assert every.design.cost_per_hour(costs_70b.catalog) < two.design.cost_per_hour(costs_70b.catalog)


def test_the_winner_is_shrunk_on_the_whole_trace(costs: CostModels) -> None:
    """The search runs on the trace's head; a prompt-heavy head (300 requests of ~4,000-token prompts)
    needs 4 prefill replicas for its own TTFT p99, while the whole trace (3,000 light requests after it)
    meets the SLO with 3: the head's best confirms on the whole trace as it is, and the plan must shrink
    it there to 3P:1D, one fewer prefill replica failing."""
    rate = 28.0
    head = load_trace(f"synthetic:n=300,rate={rate},prompt=lognormal:4000:0.3,output=lognormal:100:0.5,seed=1")
    tail = load_trace(f"synthetic:n=3000,rate={rate},prompt=lognormal:500:0.5,output=lognormal:100:0.5,seed=2")
    after = head.arrival_s[-1] + 1 / rate
    trace = make_trace("prompt-heavy head", [*head.arrival_s, *(after + tail.arrival_s)],
                       [*head.prompt_tokens, *tail.prompt_tokens], [*head.output_tokens, *tail.output_tokens])
    options = PlanOptions(hardware=("H100",), kinds=("disaggregated",), tp_choices=1, search_requests=len(head))
    planner = Planner(trace, costs, parse_slo("ttft_p99=1"), options)
    plan = planner.plan()
    assert plan.best is not None and plan.best.sizes == (3, 1) and plan.best.passed
    assert plan.best.result.completed == len(trace)  # measured on the whole trace
    fam = plan.best.family
    on_head = search_family(planner, fam, math.inf, planner.trace)  # the head search's best (cached runs)
    assert on_head is not None and on_head.sizes == (4, 1)
    assert planner.evaluate(fam, (4, 1), trace).passed  # confirmed as it is: only the shrink finds 3P:1D
    assert not planner.passes(fam, (2, 1), trace)
