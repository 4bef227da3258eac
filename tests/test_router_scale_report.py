"""benchmarks/router_scale.py's router_cost.json is what simulator/router_cost.py reads, and
its fleet model and plot come from it (fabricated results: the benchmark itself takes minutes)."""

from __future__ import annotations

import json

from benchmarks import router_scale
from simulator.router_cost import RouterCost


def results(rate: float, decision_us: float) -> dict:
    route = {f"route_{n}": {"mean_us": decision_us, "p99_us": 3 * decision_us} for n in (16, 256)}
    return {"ingest": {"fill_blocks_per_s": rate, "churn_blocks_per_s": rate / 2, "small_events_blocks_per_s": rate,
                       "rss_bytes_per_block": 30.0, "accounted_bytes_per_block": 25.0},
            "redis": {"cpu_blocks_per_s": rate * 0.8},
            "route": {**route, "hash_prompt": {"mean_us": 256.0}, "predict": {"mean_us": 51.2}}}


def test_router_cost_json_feeds_the_simulator_and_the_plot(tmp_path):
    cost = router_scale.router_cost({"compact-c": results(4e6, 12.0), "baseline": results(2e5, 500.0)})
    c = RouterCost.from_dict(json.loads(json.dumps(cost)), "compact-c")
    assert c.ingest_blocks_per_s == 2e6 and c.decision_us == {16: 12.0, 256: 12.0}  # the slowest ingest form
    assert c.hash_us_per_block == 1.0 and c.predict_us_per_block == 0.2 and c.bytes_per_block == 25.0
    model = router_scale.fleet_model(cost, [8, 256, 1024], 1000)
    assert [r["routers"] for r in model["compact-c"]] == [1, 1, 15]  # 0.64 cores ingest each, 0.89 routing
    assert model["baseline"][-1]["routers"] is None  # 1.28M event blocks/s over 160k a core: shard
    record = {"date": "2026-12-02T05:00", "cores": 2, "load_avg_1_5_15": [1.0, 1.0, 1.0], "load_avg_at_end": [2.0],
              "blocks": 64000, "fleet_model": model}
    (tmp_path / "router_scale.json").write_text(json.dumps(record))
    (tmp_path / "router_cost.json").write_text(json.dumps(cost))
    router_scale.replot(tmp_path)
    assert (tmp_path / "router_scale.png").stat().st_size > 10_000
