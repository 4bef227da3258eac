"""The Helm chart, rendered by a real helm: lint, golden renders, Kubernetes and KubeRay schemas,
the values schema, secrets kept out of pod specs, and the ConfigMap our own loader reads."""

from __future__ import annotations

import base64
import json
import os
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.config import parse_cluster_config
from tests.deploy.conftest import (
    CHART,
    EXAMPLES,
    NAMESPACE,
    RELEASE,
    by_kind,
    helm,
    normalised,
    one,
    pod_specs,
    render_text,
    secret_values,
    values_args,
)
from tests.deploy.fake_kube import FakeKube, FakeKubeServer

GOLDEN = CHART.parents[2] / "tests" / "deploy" / "golden"
CRD_SCHEMA = CHART.parents[2] / "tests" / "deploy" / "schemas" / "raycluster-v1.schema.json"
UPDATE = os.environ.get("TIERSERVE_UPDATE_GOLDEN") == "1"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {"RayCluster", "ServiceMonitor"}
SECRETISH = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|KEYS?|AUTH)(_|$)")
# The cluster loader does not take pools.attention yet: the ConfigMap test reads the others.
LOADABLE = [name for name in EXAMPLES if name != "attention"]


@pytest.mark.parametrize("example", [None, *EXAMPLES])
def test_lint_strict(example: str | None) -> None:
    files = [EXAMPLES[example]] if example else []
    out = helm("lint", "--strict", str(CHART), *values_args(files)).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("example", ["default", *EXAMPLES])
def test_golden_render(example: str) -> None:
    files = [] if example == "default" else [EXAMPLES[example]]
    text = normalised(render_text(files))
    path = GOLDEN / f"{example}.yaml"
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"no golden {path.name}: run with TIERSERVE_UPDATE_GOLDEN=1 and review the diff"
    assert text == path.read_text(), f"{path.name} differs: TIERSERVE_UPDATE_GOLDEN=1 rewrites it; review the diff"


@pytest.mark.parametrize("example", ["default", *EXAMPLES])
def test_core_kinds_validate_strictly(example: str, default_docs, example_docs) -> None:
    docs = default_docs if example == "default" else example_docs[example]
    checked = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert {"Deployment", "Service", "StatefulSet", "ConfigMap", "PodDisruptionBudget", "Pod"} <= \
        {d["kind"] for d in checked}
    for doc in checked:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_catches_an_unknown_field(default_docs) -> None:
    router = json.loads(json.dumps(one(default_docs, "Deployment", "-router")))
    router["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(router, K8S_VERSIONS[-1], strict=True)


def _crd_validator() -> jsonschema.Draft7Validator:
    """KubeRay's RayCluster schema with unknown fields rejected, as the API server's strict field
    validation (kubectl's default) does: every object with properties and no
    x-kubernetes-preserve-unknown-fields is closed."""
    vendored = json.loads(CRD_SCHEMA.read_text())
    assert vendored["version"].startswith("v1.")

    def close(node):
        if isinstance(node, dict):
            node = {k: close(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node and \
                    not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        elif isinstance(node, list):
            node = [close(v) for v in node]
        return node
    return jsonschema.Draft7Validator(close(vendored["openAPIV3Schema"]))


@pytest.mark.parametrize("example", ["default", *EXAMPLES])
def test_raycluster_matches_kuberay_crd(example: str, default_docs, example_docs) -> None:
    docs = default_docs if example == "default" else example_docs[example]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _crd_validator().iter_errors(one(docs, "RayCluster"))]
    assert errors == []


def test_crd_check_catches_a_misspelt_field(default_docs) -> None:
    cluster = json.loads(json.dumps(one(default_docs, "RayCluster")))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    cluster["spec"]["authOptions"]["mode"] = "password"
    paths = {tuple(e.absolute_path) for e in _crd_validator().iter_errors(cluster)}
    assert paths == {("spec", "workerGroupSpecs", 0), ("spec", "authOptions", "mode")}


def test_worker_groups_follow_the_pools(example_docs) -> None:
    spec = one(example_docs["h100-l40s"], "RayCluster")["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert list(groups) == ["prefill", "decode"]
    prefill, decode = groups["prefill"], groups["decode"]
    assert (prefill["replicas"], prefill["minReplicas"], prefill["maxReplicas"]) == (1, 0, 2)
    assert prefill["rayStartParams"] == {"num-gpus": "8", "num-cpus": "96",
                                         "resources": '"{\\"tierserve-prefill\\":4}"'}  # 8 GPUs / TP 2
    assert decode["rayStartParams"]["resources"] == '"{\\"tierserve-decode\\":1}"'
    pod = prefill["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                   "node.example.com/pool": "gpu-h100"}
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8",
                                                          "rdma/ib": "1"}
    assert decode["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}
    assert {t["key"] for t in decode["template"]["spec"]["tolerations"]} == {"nvidia.com/gpu", "dedicated"}
    assert spec["authOptions"] == {"mode": "token", "secretName": "tierserve-secrets"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_attention_group_only_when_enabled(default_docs, example_docs) -> None:
    assert [g["groupName"] for g in one(default_docs, "RayCluster")["spec"]["workerGroupSpecs"]] == \
        ["prefill", "decode"]
    docs = example_docs["attention"]
    assert [g["groupName"] for g in one(docs, "RayCluster")["spec"]["workerGroupSpecs"]] == \
        ["prefill", "decode", "attention"]
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["cluster.yaml"])
    assert config["pools"]["attention"]["hardware"]["resources"] == {"tierserve-attention": 1}


@pytest.mark.parametrize("example", ["default", *LOADABLE])
def test_configmap_loads_with_the_cluster_loader(example: str, default_docs, example_docs) -> None:
    docs = default_docs if example == "default" else example_docs[example]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if example != "default":
        values = _merged(values, yaml.safe_load(EXAMPLES[example].read_text()))
    config = parse_cluster_config(yaml.safe_load(one(docs, "ConfigMap")["data"]["cluster.yaml"]))
    enabled = {name: p for name, p in values["pools"].items() if p["enabled"]}
    assert set(config.pools) == set(enabled)
    for name, pool in enabled.items():
        loaded = config.pools[name]
        assert loaded.replicas == pool["replicas"]
        assert (loaded.hardware.num_gpus, loaded.hardware.num_cpus) == (pool["gpusPerReplica"], pool["cpusPerReplica"])
        assert loaded.hardware.resources == {f"tierserve-{name}": 1.0}
    assert config.name == values["config"]["name"] and config.model == values["config"]["model"]
    assert config.kvstore.redis_url == f"redis://{RELEASE}-tierserve-redis:6379/0"  # no password in it
    assert (config.router.host, config.router.http_port) == ("0.0.0.0", values["router"]["httpPort"])


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("example", ["default", *EXAMPLES])
def test_no_plaintext_secret_in_any_pod_spec(example: str, default_docs, example_docs) -> None:
    docs = default_docs if example == "default" else example_docs[example]
    outside_secrets = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    for value in secret_values(docs):
        assert value not in outside_secrets
    for where, spec in pod_specs(docs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for env in c.get("env", []):
                if SECRETISH.search(env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{where}: {env}"


def test_router_gets_its_secrets_by_reference(example_docs) -> None:
    pod = one(example_docs["h100-l40s"], "Deployment", "-router")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    refs = {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env.items() if "valueFrom" in e}
    assert refs == {"REDIS_PASSWORD": ("tierserve-secrets", "redis-password"),
                    "TIERSERVE_KV_SECRET": ("tierserve-secrets", "kv-secret"),
                    "RAY_AUTH_TOKEN": ("tierserve-secrets", "auth_token"),
                    "TIERSERVE_API_KEYS": ("tierserve-api-keys", "api-keys")}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert pod["containers"][0]["args"][:6] == ["tierserve", "serve", "--config", "/etc/tierserve/cluster.yaml",
                                                "--address", "ray://demo-tierserve-head-svc:10001"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_existing_secret_is_used_and_none_generated(example_docs, default_docs) -> None:
    docs = example_docs["h100-l40s"]
    assert [d["metadata"]["name"] for d in by_kind(docs, "Secret")] == ["demo-tierserve-nccl-tests-ssh"]
    assert [d["metadata"]["name"] for d in by_kind(default_docs, "Secret")] == ["demo-tierserve-secrets"]
    assert set(one(default_docs, "Secret")["data"]) == {"redis-password", "kv-secret", "auth_token"}


def test_generated_secrets_are_kept_on_upgrade(tmp_path) -> None:
    """helm's lookup against a (fake) API server that already holds the release's Secrets: their
    values are rendered again, not new random ones; a first install generates them."""
    kept = {"redis-password": "kept-password", "kv-secret": "kept-kv-secret", "auth_token": "kept-token"}
    kube = FakeKube()
    for name, data in (("demo-tierserve-secrets", kept), ("demo-tierserve-nccl-tests-ssh", {"id_rsa": "kept-key"})):
        kube.secrets[(NAMESPACE, name)] = {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": name, "namespace": NAMESPACE}, "data": {k: base64.b64encode(v.encode()).decode()
                                                             for k, v in data.items()}}
    with FakeKubeServer(kube, tmp_path, NAMESPACE) as kubeconfig:
        upgrade = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=server", "--kubeconfig",
                       str(kubeconfig), "--set", "ncclTests.enabled=true").stdout
        kube.secrets.clear()
        install = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=server", "--kubeconfig",
                       str(kubeconfig)).stdout
    secrets = {d["metadata"]["name"]: d["data"] for d in yaml.safe_load_all(upgrade) if d and d["kind"] == "Secret"}
    assert {k: base64.b64decode(v).decode() for k, v in secrets["demo-tierserve-secrets"].items()} == kept
    assert base64.b64decode(secrets["demo-tierserve-nccl-tests-ssh"]["id_rsa"]).decode() == "kept-key"
    (fresh,) = [d["data"] for d in yaml.safe_load_all(install) if d and d["kind"] == "Secret"]
    assert {k: len(base64.b64decode(v)) for k, v in fresh.items()} == {"redis-password": 32, "kv-secret": 48,
                                                                       "auth_token": 48}
    assert ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/demo-tierserve-secrets") in \
        [(r.method, r.path) for r in kube.requests]


def test_optional_objects(default_docs, example_docs) -> None:
    assert not by_kind(default_docs, "ServiceMonitor") and not by_kind(default_docs, "NetworkPolicy")
    assert not by_kind(default_docs, "Job")
    docs = example_docs["h100-l40s"]
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert {d["metadata"]["name"] for d in by_kind(docs, "NetworkPolicy")} == \
        {"demo-tierserve-redis", "demo-tierserve-ray", "demo-tierserve-router"}
    pdbs = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "PodDisruptionBudget")}
    assert pdbs["demo-tierserve-decode"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "ray.io/cluster": "demo-tierserve", "ray.io/group": "decode"}}}
    assert set(pdbs) == {f"demo-tierserve-{n}" for n in ("prefill", "decode", "ray-head", "router", "redis")}


def test_helm_test_hook_sends_one_completion(default_docs) -> None:
    pod = one(default_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["URL"] == "http://demo-tierserve-router:8000/v1/completions"
    assert env["MODEL"] == "Meta-Llama-3-8B-Instruct"


def test_nccl_tests_jobs_run_one_rank_on_each_pool(example_docs) -> None:
    jobs = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in by_kind(example_docs["h100-l40s"], "Job")}
    launcher, peer = jobs["demo-tierserve-nccl-tests"], jobs["demo-tierserve-nccl-tests-peer"]
    assert launcher["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert peer["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L40S"
    script = launcher["containers"][0]["args"][0]
    assert "for test in sendrecv_perf all_reduce_perf; do" in script
    assert '-b 8 -e 1G -f 2 -g 1 -J "/results/$test.json"' in script
    assert (launcher["hostname"], peer["hostname"]) == ("launcher", "peer")


# Values the schema refuses, and the key path helm names for each.
REJECTED = [
    ({"pools.prefill.bogus": "1"}, "pools.prefill"),
    ({"surprise": "1"}, "(root)"),
    ({"router.httpPort": "eighty"}, "router.httpPort"),
    ({"pools.decode.replicas": "0"}, "pools.decode.replicas"),
    ({"pools.decode.workers.cpu": "lots"}, "pools.decode.workers.cpu"),
    ({"pools.prefill.engine.max_num_seqs": "many"}, "pools.prefill.engine.max_num_seqs"),
    ({"config.name": "Not_A_Name"}, "config.name"),
    ({"config.router.policy": "random"}, "config.router.policy"),
    ({"ray.autoscaling.enabled": "yes please"}, "ray.autoscaling.enabled"),
    ({"ncclTests.between[0]": "router"}, "ncclTests.between.0"),
    ({"image.pullPolicy": "Sometimes"}, "image.pullPolicy"),
]


@pytest.mark.parametrize(("sets", "path"), REJECTED, ids=[p for _, p in REJECTED])
def test_values_schema_rejects(sets: dict[str, str], path: str) -> None:
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args((), sets), check=False)
    assert proc.returncode != 0
    paths = re.findall(r"^- (\S+): ", proc.stderr, re.MULTILINE)
    assert path in paths, proc.stderr


@pytest.mark.parametrize(("sets", "message"), [
    ({"pools.colocated.enabled": "true"}, "pools: enable prefill + decode or colocated, not both"),
    ({"pools.decode.enabled": "false"}, "pools: enable prefill and decode, or colocated"),
    ({"pools.prefill.replicas": "9"}, "pools.prefill: 9 replicas at 1 per pod need 9 pods, more than "
                                      "workers.maxReplicas (4)"),
    ({"pools.prefill.gpusPerReplica": "2"}, "pools.prefill: a worker pod (1 GPUs, 8 CPUs) cannot hold a replica"),
])
def test_inconsistent_values_fail_with_a_message(sets: dict[str, str], message: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *values_args((), sets), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
