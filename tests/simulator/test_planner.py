"""The planner: cheapest design within the SLO, local minimality, infeasible SLOs, cluster configs."""

from __future__ import annotations

import pytest

from cluster.config import load_cluster_config
from simulator.cluster_config import cluster_config, write_cluster_config
from simulator.costs import CostModels
from simulator.design import Design, PoolSpec
from simulator.design_spec import design_from_config
from simulator.errors import SimInputError
from simulator.planner import Planner, PlanOptions
from simulator.slo import parse_slo
from simulator.traces.load import load_trace

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
