"""The cluster config a plan writes: the YAML `tierserve serve --config` reads (cluster/config.py),
plus a ``plan`` mapping of predictions that the cluster loader ignores; and the same design as
values for the Helm chart (deploy/helm/tierserve, docs/deploy.md)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from simulator.design import Design, PoolSpec
from simulator.design_spec import CLUSTER_POLICIES
from simulator.hardware import Catalog
from simulator.metrics import SimResult
from simulator.models import ModelSpec
from simulator.slo import SLO

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOST_TIER_BYTES = 8 << 30
PREDICTED = ("ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "tpot_p99", "e2e_p99")


def _pool(name: str, pool: PoolSpec, catalog: Catalog) -> dict:
    hw = catalog[pool.hardware]
    hardware = {"accelerator_type": hw.accelerator_type, "num_gpus": pool.tp if hw.kind == "gpu" else 0,
                "num_cpus": hw.num_cpus * pool.tp}
    out: dict = {"replicas": pool.replicas, "hardware": hardware}
    if name in ("prefill", "colocated"):
        out["engine"] = {"max_num_seqs": pool.max_num_seqs, "max_num_batched_tokens": pool.max_num_batched_tokens}
    elif name == "decode":
        out["engine"] = {"max_num_seqs": pool.max_num_seqs}
    return out


def cluster_config(design: Design, model: ModelSpec, catalog: Catalog, result: SimResult | None = None,
                   slo: SLO | None = None, trace_name: str = "", model_ref: str | None = None) -> dict:
    config = {
        "model": model_ref or model.hf_name or model.name,
        "dtype": "bfloat16" if model.dtype_bytes == 2 else "float32",
        "pools": {name: _pool(name, pool, catalog) for name, pool in design.pools().items()},
        "kvstore": {"redis_url": DEFAULT_REDIS_URL, "host_tier_bytes": DEFAULT_HOST_TIER_BYTES},
        "router": {"grpc_port": 50051, "http_port": 8000},
    }
    if design.router in CLUSTER_POLICIES:  # least_loaded has no cluster equivalent: the cluster's default
        config["router"]["policy"] = CLUSTER_POLICIES[design.router]
    plan = {"design": design.label(), "kind": design.kind,
            "hardware": {name: pool.hardware for name, pool in design.pools().items()},
            "cost_per_hour": round(design.cost_per_hour(catalog), 4),
            "peak_watts": design.peak_watts(catalog), "trace": trace_name, "slo": slo.text() if slo else None}
    if result is not None:
        plan.update(throughput_rps=result.throughput_rps, output_tps=result.output_tps,
                    goodput_rps=result.goodput_rps, slo_attainment=result.slo_attainment,
                    usd_per_mtok=result.usd_per_mtok, tokens_per_joule=result.tokens_per_joule,
                    utilization=result.utilization, **{k: result.percentiles[k] for k in PREDICTED})
    config["plan"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in plan.items()}
    return config


def write_cluster_config(path: str | Path, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


VALUES_HEADER = """\
# Values for the tierserve Helm chart (deploy/helm/tierserve) from `tierserve plan`: the pools,
# replicas, tensor-parallel sizes and GPU types of the chosen design ({design}).
#   helm install tierserve deploy/helm/tierserve -f values.yaml -f my-site.yaml
# config.model is the checkpoint's path inside the pods (a hub name becomes /models/NAME): mount
# it there with modelVolume in my-site.yaml. A worker pod holds as many replicas as fit one node;
# pods' memory, node selectors beyond the GPU type and the rest keep the chart's defaults.
"""


def chart_values(config: dict, catalog: Catalog) -> dict:
    """The chart's values for a cluster config written by cluster_config (the plan's hardware by pool)."""
    hardware = config["plan"]["hardware"]
    model = config["model"] if config["model"].startswith("/") else f"/models/{config['model'].rsplit('/', 1)[-1]}"
    values: dict = {"config": {"name": config.get("name", "tierserve"), "model": model,
                               "dtype": config.get("dtype"),
                               "kvstore": {"host_tier_bytes": config["kvstore"]["host_tier_bytes"]}}}
    if "policy" in config["router"]:
        values["config"]["router"] = {"policy": config["router"]["policy"]}
    pools = {name: _chart_pool(pool, catalog[hardware[name]], hardware[name]) for name, pool in config["pools"].items()}
    for name in ("prefill", "decode", "colocated", "attention"):
        pools.setdefault(name, {"enabled": False})
    values["pools"] = pools
    return values


def _chart_pool(pool: dict, hw, name: str) -> dict:
    """One pool's values: a worker pod holds as many replicas as fit one node (of max_devices_per_node)."""
    gpus = int(pool["hardware"]["num_gpus"])
    per_pod = max(1, min(pool["replicas"], hw.max_devices_per_node // gpus)) if gpus else 1
    pods = math.ceil(pool["replicas"] / per_pod)
    out = {"enabled": True, **({"gpuType": name} if gpus else {}), "replicas": pool["replicas"], "gpusPerReplica": gpus,
           "cpusPerReplica": pool["hardware"]["num_cpus"], "engine": pool.get("engine", {}),
           "workers": {"replicas": pods, "minReplicas": 0, "maxReplicas": pods, "gpus": gpus * per_pod,
                       "cpu": str(math.ceil(pool["hardware"]["num_cpus"] * per_pod))}}
    return out


def write_chart_values(path: str | Path, values: dict, design: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VALUES_HEADER.format(design=design) + yaml.safe_dump(values, sort_keys=False))
    return path
