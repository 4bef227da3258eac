"""`tierserve plan` writes chart values beside cluster.yaml; the chart renders the same pools."""

from __future__ import annotations

import pytest
import yaml

from cluster.cli import main
from cluster.config import load_cluster_config, parse_cluster_config
from simulator.cluster_config import chart_values, cluster_config, write_chart_values
from simulator.design_spec import parse_design
from simulator.hardware import load_catalog
from simulator.models import load_model
from tests.deploy.conftest import one, render

CATALOG = load_catalog()


def _rendered_pools(values_path) -> tuple[dict, dict]:
    docs = render([values_path])
    groups = {g["groupName"]: g for g in one(docs, "RayCluster")["spec"]["workerGroupSpecs"]}
    return groups, yaml.safe_load(one(docs, "ConfigMap")["data"]["cluster.yaml"])


@pytest.mark.parametrize("spec", ["prefill=H100x3@tp2,decode=L40Sx5", "colocated=A100-80Gx2@tp4",
                                  "prefill=H100x1,decode=H200x2,attention=L40Sx2"])
def test_values_render_the_plans_pools(spec: str, tmp_path) -> None:
    design = parse_design(spec, CATALOG)
    config = cluster_config(design, load_model("llama-3-70b"), CATALOG, model_ref="/models/llama-3-70b")
    values_path = write_chart_values(tmp_path / "values.yaml", chart_values(config, CATALOG), design.label())
    groups, rendered = _rendered_pools(values_path)
    assert list(groups) == [name for name in ("prefill", "decode", "colocated", "attention") if name in config["pools"]]
    for name, pool in config["pools"].items():
        planned, chart = pool["hardware"], rendered["pools"][name]
        assert chart["replicas"] == pool["replicas"]
        assert (chart["hardware"]["num_gpus"], chart["hardware"]["num_cpus"]) == (planned["num_gpus"],
                                                                                  planned["num_cpus"])
        assert chart.get("engine") == pool.get("engine")
        hw = CATALOG[config["plan"]["hardware"][name]]
        node = groups[name]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        assert node == {"H100": "NVIDIA-H100-80GB-HBM3", "L40S": "NVIDIA-L40S", "H200": "NVIDIA-H200",
                        "A100-80G": "NVIDIA-A100-SXM4-80GB"}[hw.name]
        per_pod = int(groups[name]["rayStartParams"]["resources"].split(":")[1].rstrip('}"'))
        gpus = int(groups[name]["rayStartParams"]["num-gpus"])
        assert gpus == per_pod * planned["num_gpus"] <= hw.max_devices_per_node
        assert groups[name]["replicas"] * per_pod >= pool["replicas"]
        assert groups[name]["maxReplicas"] * per_pod >= pool["replicas"]
    if "attention" not in config["pools"]:
        assert parse_cluster_config(rendered).pools.keys() == config["pools"].keys()


def test_plan_writes_values_next_to_the_cluster_config(tmp_path, capsys) -> None:
    code = main(["plan", "--trace", "synthetic:n=120,rate=4,workload=conversation,seed=3", "--slo",
                 "ttft_p99=2,tbt_p99=150ms", "--kinds", "disaggregated", "--hardware", "H100,L40S",
                 "--max-replicas", "4", "--search-requests", "120", "--pareto", "1", "--out", str(tmp_path)])
    assert code == 0
    assert "values.yaml (Helm chart values)" in capsys.readouterr().out
    config = load_cluster_config(tmp_path / "cluster.yaml")
    planned = yaml.safe_load((tmp_path / "cluster.yaml").read_text())["plan"]["hardware"]
    values = yaml.safe_load((tmp_path / "values.yaml").read_text())
    for name, pool in config.pools.items():
        assert values["pools"][name]["replicas"] == pool.replicas
        assert values["pools"][name]["gpusPerReplica"] == pool.hardware.num_gpus
        assert values["pools"][name]["gpuType"] == planned[name]
    groups, rendered = _rendered_pools(tmp_path / "values.yaml")
    assert {n: p["replicas"] for n, p in rendered["pools"].items()} == {n: p.replicas for n, p in config.pools.items()}
