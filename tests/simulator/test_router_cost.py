"""simulator/router_cost.py: routers a fleet needs from router_scale.py's measurements."""

from __future__ import annotations

import json

import pytest

from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.router_cost import MEASURED, RouterCost, for_design, routers_needed
from simulator.traces.trace import make_trace

MEASUREMENTS = {"source": "benchmarks/router_scale.py", "date": "2026-12-02", "cpu": "test",
                "impls": {"compact-c": {"ingest_blocks_per_s": 2e6, "decision_us": {"16": 10, "256": 20, "1024": 40},
                                        "hash_us_per_block": 2.0, "predict_us_per_block": 0.2,
                                        "bytes_per_block": 32}}}


def cost() -> RouterCost:
    return RouterCost.from_dict(MEASUREMENTS)


def test_decision_interpolates_in_log_replicas_and_scans_past_the_largest():
    c = cost()
    assert c.decision_s(16) == pytest.approx(10e-6) and c.decision_s(4) == pytest.approx(10e-6)
    assert c.decision_s(64) == pytest.approx(15e-6)  # halfway between 16 and 256 in log
    assert c.decision_s(2048) == pytest.approx(80e-6)
    assert c.request_s(256, 256) == pytest.approx(20e-6 + 256 * 2.2e-6)


def test_routers_needed_ingest_is_per_router_requests_split():
    # 256 replicas x 10k tokens/s: 2.56M tokens/s, 320k event blocks/s = 0.16 cores in every router
    need = routers_needed(cost(), 2.56e6, 625, 256, 4096, 16, cached_blocks=4e6)
    assert need.ingest_cores == pytest.approx(0.16)
    assert need.routing_cores == pytest.approx(625 * (20e-6 + 256 * 2.2e-6))
    assert need.routers == 1 and need.index_bytes == pytest.approx(128e6)
    more = routers_needed(cost(), 2.56e6, 4000, 256, 4096, 16)
    assert more.routers == 5  # 2.33 routing cores over 0.54 left per router
    assert more.cores == pytest.approx(5 * 0.16 + more.routing_cores)
    assert "5 process(es)" in more.text()


def test_ingest_beyond_one_core_asks_for_sharding():
    need = routers_needed(cost(), 2e7, 10, 64, 4096, 16)  # 2.5M event blocks/s over 2M/s per core
    assert need.routers is None and "shard" in need.text()


def test_bad_inputs_are_errors(tmp_path):
    with pytest.raises(SimInputError, match="compact-numpy"):
        RouterCost.from_dict(MEASUREMENTS, "compact-numpy")
    with pytest.raises(SimInputError):
        routers_needed(cost(), 1e6, 1, 0, 4096, 16)
    assert RouterCost.load(tmp_path / "absent.json") is None
    path = tmp_path / "router_cost.json"
    path.write_text(json.dumps(MEASUREMENTS))
    assert RouterCost.load(path).decision_us == {16: 10.0, 256: 20.0, 1024: 40.0}


def test_the_shipped_measurements_load():
    if not MEASURED.exists():
        pytest.skip("no router_scale measurements in this checkout")
    c = RouterCost.load()
    assert c.ingest_blocks_per_s > 0 and 256 in c.decision_us and c.bytes_per_block > 0


def test_a_plans_routers_from_its_design_and_trace():
    """2 req/s of 4096-token prompts on 8 prefill replicas: 8192 tokens/s, 1024 event blocks/s."""
    trace = make_trace("t", [0.5 * i for i in range(101)], [4096] * 101, [10] * 101)
    design = Design(prefill=PoolSpec("H100", 8), decode=PoolSpec("L40S", 4))
    need = for_design(design, trace, cost())
    assert need.ingest_cores == pytest.approx(1024 / 2e6)
    assert need.routing_cores == pytest.approx(2 * cost().request_s(8, 256)) and need.routers == 1
    colocated = for_design(Design(colocated=PoolSpec("H100", 300)), trace, cost())
    assert colocated.routing_cores == pytest.approx(2 * cost().request_s(300, 256))
    assert for_design(design, make_trace("one", [0.0], [10], [1]), cost()) is None
