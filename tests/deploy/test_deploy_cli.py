"""`tierserve deploy` against a fake Kubernetes API server on loopback, through the real client:
the requests it sends (and their content types), scaling under conflicts, the status table, logs."""

from __future__ import annotations

import copy

import pytest

from cluster.cli import main
from simulator.nccl_tests import link_from_nccl_tests
from tests.deploy.conftest import EXAMPLES, NAMESPACE, RELEASE, normalised, one, render, render_text
from tests.deploy.fake_kube import FakeKube, FakeKubeServer
from tests.deploy.test_nccl_tests import DATA

SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=tierserve"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters"


def _pod(name: str, labels: dict, ready: bool, phase: str = "Running") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/name": "tierserve", **labels}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return render()


@pytest.fixture
def kube(manifests) -> FakeKube:
    """The default chart's RayCluster and router as the operator would have made them, and their pods."""
    state = FakeKube()
    rc = copy.deepcopy(one(manifests, "RayCluster"))
    rc["metadata"].update(namespace=NAMESPACE, resourceVersion=state.next_rv())
    rc["spec"]["workerGroupSpecs"][0]["replicas"] = 2
    rc["status"] = {"state": "ready"}
    state.rayclusters[(NAMESPACE, rc["metadata"]["name"])] = rc
    router = copy.deepcopy(one(manifests, "Deployment", "-router"))
    router["metadata"]["namespace"] = NAMESPACE
    router["status"] = {"replicas": 1, "readyReplicas": 1}
    state.deployments[(NAMESPACE, router["metadata"]["name"])] = router
    cluster = {"ray.io/cluster": rc["metadata"]["name"]}
    for name, labels, ready, phase in [
            ("head-x1", {**cluster, "ray.io/node-type": "head", "ray.io/group": "headgroup",
                         "app.kubernetes.io/component": "ray-head"}, True, "Running"),
            ("prefill-a", {**cluster, "ray.io/node-type": "worker", "ray.io/group": "prefill"}, True, "Running"),
            ("prefill-b", {**cluster, "ray.io/node-type": "worker", "ray.io/group": "prefill"}, False, "Pending"),
            ("decode-a", {**cluster, "ray.io/node-type": "worker", "ray.io/group": "decode"}, True, "Running"),
            ("redis-0", {"app.kubernetes.io/component": "redis"}, True, "Running"),
            ("router-1", {"app.kubernetes.io/component": "router"}, True, "Running"),
            ("nccl-launcher", {"app.kubernetes.io/component": "nccl-tests", "tierserve.io/nccl-role": "launcher"},
             False, "Succeeded")]:
        state.pods[(NAMESPACE, name)] = _pod(name, labels, ready, phase)
    state.logs[(NAMESPACE, "router-1", "router")] = "serving cluster 'tierserve' (prefill=1, decode=1)\n"
    state.logs[(NAMESPACE, "prefill-a", "ray-worker")] = "a1\na2\na3\n"
    state.logs[(NAMESPACE, "prefill-b", "ray-worker")] = "b1\n"
    state.logs[(NAMESPACE, "nccl-launcher", "nccl-tests")] = (DATA / "nccl_job_log.txt").read_text()
    return state


@pytest.fixture
def kubeconfig(kube, tmp_path):
    with FakeKubeServer(kube, tmp_path, namespace=NAMESPACE) as path:
        yield str(path)


def deploy(kubeconfig: str, *args: str) -> int:
    return main(["deploy", *args, "--release", RELEASE, "--kubeconfig", kubeconfig])


def calls(kube: FakeKube) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in kube.requests]


def test_status_reads_the_raycluster_pods_and_router(kube, kubeconfig, capsys) -> None:
    assert deploy(kubeconfig, "status") == 0
    out = capsys.readouterr().out
    assert [(r.method, r.path, r.query.get("labelSelector")) for r in kube.requests] == [
        ("GET", RAYCLUSTERS, SELECTOR),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", SELECTOR),
        ("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", SELECTOR + ",app.kubernetes.io/component=router")]
    assert out == (
        "RayCluster demo-tierserve (serving): ready; autoscaling on\n"
        "component  desired  min..max  ready  not ready\n"
        "ray head         1                1          0\n"
        "prefill          2      0..4      1          1\n"
        "decode           1      0..4      1          0\n"
        "redis            1                1          0\n"
        "router           1                1          0\n")


def test_status_says_when_the_router_is_not_ready(kube, kubeconfig, capsys) -> None:
    kube.deployments[(NAMESPACE, "demo-tierserve-router")]["status"] = {"replicas": 1, "readyReplicas": 0}
    assert deploy(kubeconfig, "status") == 0
    assert "the router is not ready" in capsys.readouterr().out


def test_scale_sends_one_guarded_json_patch(kube, kubeconfig, capsys) -> None:
    assert deploy(kubeconfig, "scale", "decode", "3") == 0
    get, patch = kube.requests
    assert (get.method, get.path, patch.method, patch.path) == ("GET", RAYCLUSTERS, "PATCH",
                                                                 f"{RAYCLUSTERS}/demo-tierserve")
    assert patch.content_type == "application/json-patch+json"
    assert patch.body == [{"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "decode"},
                          {"op": "replace", "path": "/metadata/resourceVersion", "value": "101"},
                          {"op": "add", "path": "/spec/workerGroupSpecs/1/replicas", "value": 3}]
    groups = kube.rayclusters[(NAMESPACE, "demo-tierserve")]["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"]) for g in groups] == [("prefill", 2), ("decode", 3)]
    out = capsys.readouterr().out
    assert "decode: 1 -> 3 pods" in out and "the Ray autoscaler manages this group too" in out


def test_scale_rereads_and_retries_on_conflict(kube, kubeconfig) -> None:
    kube.writes_before_patch = 2
    assert deploy(kubeconfig, "scale", "prefill", "4") == 0
    assert calls(kube) == [("GET", RAYCLUSTERS, 200), ("PATCH", f"{RAYCLUSTERS}/demo-tierserve", 409)] * 2 + [
        ("GET", RAYCLUSTERS, 200), ("PATCH", f"{RAYCLUSTERS}/demo-tierserve", 200)]
    versions = [r.body[1]["value"] for r in kube.requests if r.method == "PATCH"]
    assert versions == ["101", "102", "103"]  # each attempt carries the version it read
    groups = kube.rayclusters[(NAMESPACE, "demo-tierserve")]["spec"]["workerGroupSpecs"]
    assert groups[0]["replicas"] == 4 and groups[1]["replicas"] == 1


def test_scale_gives_up_after_bounded_conflicts(kube, kubeconfig, capsys) -> None:
    kube.writes_before_patch = 100
    assert deploy(kubeconfig, "scale", "prefill", "3") == 2
    assert [m for m, _, _ in calls(kube)].count("PATCH") == 5
    assert "kept changing under 5 attempts" in capsys.readouterr().err
    assert kube.rayclusters[(NAMESPACE, "demo-tierserve")]["spec"]["workerGroupSpecs"][0]["replicas"] == 2


@pytest.mark.parametrize(("pool", "n", "message"), [
    ("decode", "9", "decode: 9 pods is outside its bounds 0..4"),
    ("attention", "1", "has no worker group 'attention' (it has prefill, decode)"),
])
def test_scale_refuses_without_patching(kube, kubeconfig, capsys, pool, n, message) -> None:
    assert deploy(kubeconfig, "scale", pool, n) == 2
    assert message in capsys.readouterr().err
    assert [m for m, _, _ in calls(kube)] == ["GET"]


def test_a_missing_release_is_one_error_line(kube, kubeconfig, capsys) -> None:
    assert main(["deploy", "status", "--release", "other", "--kubeconfig", kubeconfig]) == 2
    assert capsys.readouterr().err == "error: no tierserve RayCluster of release 'other' in namespace 'serving'\n"


def test_logs_of_a_pool_name_each_pod(kube, kubeconfig, capsys) -> None:
    assert deploy(kubeconfig, "logs", "prefill", "--tail", "2") == 0
    assert capsys.readouterr().out == "==> prefill-a <==\na2\na3\n==> prefill-b <==\nb1\n"
    log_reads = [r for r in kube.requests if r.path.endswith("/log")]
    assert [(r.path, r.query) for r in log_reads] == [
        (f"/api/v1/namespaces/{NAMESPACE}/pods/prefill-a/log", {"container": "ray-worker", "tailLines": "2"}),
        (f"/api/v1/namespaces/{NAMESPACE}/pods/prefill-b/log", {"container": "ray-worker", "tailLines": "2"})]
    assert deploy(kubeconfig, "logs", "router") == 0
    assert capsys.readouterr().out == "serving cluster 'tierserve' (prefill=1, decode=1)\n"


def test_nccl_tests_log_feeds_the_link_calibration(kube, kubeconfig, capsys, tmp_path) -> None:
    assert deploy(kubeconfig, "logs", "nccl-tests") == 0
    saved = tmp_path / "nccl.txt"
    saved.write_text(capsys.readouterr().out)
    warnings: list[str] = []
    assert link_from_nccl_tests(saved, warnings.append).bandwidth == pytest.approx(44.83e9)
    assert warnings == []


def test_render_is_helm_template(capfd) -> None:
    assert main(["deploy", "render", "--release", RELEASE, "-n", NAMESPACE, "-f", str(EXAMPLES["cpu-colocated"])]) == 0
    assert normalised(capfd.readouterr().out) == normalised(render_text([EXAMPLES["cpu-colocated"]]))


def test_an_unreachable_api_is_one_error_line(tmp_path, capsys) -> None:
    server = FakeKubeServer(FakeKube(), tmp_path)  # written, never started: its port refuses
    server.server.server_close()
    assert main(["deploy", "status", "--kubeconfig", str(server.kubeconfig)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Kubernetes API at http://127.0.0.1:") and err.count("\n") == 1
