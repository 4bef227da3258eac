"""A small fake Kubernetes API server on loopback for `tierserve deploy` tests, driven by the real
`kubernetes` client: RayClusters (get, list, JSON patch with resourceVersion preconditions),
pods and their logs, Deployments; Secrets and the discovery that helm's `lookup` needs. Every
request is recorded (method, path, query, content type, body) so tests can assert the sequence."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: object
    status: int = 0


@dataclass
class FakeKube:
    """State: objects by (kind, namespace, name); `writes_before_patch` makes that many PATCHes meet an
    object someone else wrote after the client read it (the autoscaler, say): rv moves on, 409."""

    rayclusters: dict[tuple[str, str], dict] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict] = field(default_factory=dict)
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    writes_before_patch: int = 0
    rv: int = 100

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)


def _matches(obj: dict, selector: str | None) -> bool:
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in (selector or "").split(",") if term))


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message,
            "code": code}


def _pointer(doc, path: str):
    """(parent, key) of a JSON pointer."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last = parts[-1]
    return doc, (int(last) if isinstance(doc, list) else last)


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    """test / add / replace (all the client sends); a failed test raises ValueError."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "test":
            if parent[key] != op["value"]:
                raise ValueError(f"testing value {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and (key not in parent if isinstance(parent, dict) else key >= len(parent)):
                raise ValueError(f"replace: {op['path']} does not exist")
            parent[key] = op["value"]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, payload, content_type: str = "application/json") -> None:
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.kube.requests[-1].status = code
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> tuple[list[str], dict[str, str], object]:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.kube.requests.append(Request(self.command, url.path, query, self.headers.get("Content-Type"), body))
        return url.path.strip("/").split("/"), query, body

    def do_GET(self) -> None:  # noqa: N802
        parts, query, _ = self._record()
        k = self.kube
        if parts[:3] == ["apis", "ray.io", "v1"] and parts[5:6] == ["rayclusters"]:
            ns = parts[4]
            if len(parts) == 6:
                items = [o for (n, _), o in k.rayclusters.items()
                         if n == ns and _matches(o, query.get("labelSelector"))]
                return self._send(200, {"apiVersion": "ray.io/v1", "kind": "RayClusterList", "items": items,
                                        "metadata": {"resourceVersion": str(k.rv)}})
            obj = k.rayclusters.get((ns, parts[6]))
            return self._send(200, obj) if obj else self._send(404, _status(404, "NotFound", "not found"))
        if parts == ["api", "v1"]:  # discovery, as helm's lookup does it
            return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
                {"name": name, "singularName": name[:-1], "namespaced": True, "kind": kind, "verbs": ["get", "list"]}
                for name, kind in (("secrets", "Secret"), ("pods", "Pod"))]})
        if parts[:2] == ["api", "v1"] and parts[4:5] == ["secrets"] and len(parts) == 6:
            obj = k.secrets.get((parts[3], parts[5]))
            return self._send(200, obj) if obj else self._send(404, _status(404, "NotFound", "not found"))
        if parts[:2] == ["api", "v1"] and parts[4:5] == ["pods"]:
            ns = parts[3]
            if len(parts) == 7 and parts[6] == "log":
                text = k.logs.get((ns, parts[5], query.get("container", "")))
                if text is None:
                    return self._send(404, _status(404, "NotFound", f"no log for {parts[5]}"))
                if "tailLines" in query:
                    text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]):])
                return self._send(200, text, "text/plain")
            items = [o for (n, _), o in k.pods.items() if n == ns and _matches(o, query.get("labelSelector"))]
            return self._send(200, {"apiVersion": "v1", "kind": "PodList", "items": items, "metadata": {}})
        if parts[:3] == ["apis", "apps", "v1"] and parts[5:6] == ["deployments"]:
            ns = parts[4]
            items = [o for (n, _), o in k.deployments.items() if n == ns and _matches(o, query.get("labelSelector"))]
            return self._send(200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "items": items,
                                    "metadata": {}})
        self._send(404, _status(404, "NotFound", f"the fake has no {self.path}"))

    def do_PATCH(self) -> None:  # noqa: N802
        parts, _, body = self._record()
        k = self.kube
        key = (parts[4], parts[6]) if parts[:3] == ["apis", "ray.io", "v1"] and len(parts) == 7 else None
        if key not in k.rayclusters:
            return self._send(404, _status(404, "NotFound", "not found"))
        if self.headers.get("Content-Type") != "application/json-patch+json":
            return self._send(415, _status(415, "UnsupportedMediaType", "only json-patch here"))
        if k.writes_before_patch:  # someone else wrote it after the client read it
            k.writes_before_patch -= 1
            k.rayclusters[key]["metadata"]["resourceVersion"] = k.next_rv()
        current = k.rayclusters[key]
        try:
            patched = apply_json_patch(current, body)
        except (ValueError, KeyError, IndexError) as e:
            return self._send(422, _status(422, "Invalid", str(e)))
        if patched["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self._send(409, _status(409, "Conflict", "Operation cannot be fulfilled on rayclusters.ray.io: "
                                                            "the object has been modified; please apply your "
                                                            "changes to the latest version and try again"))
        patched["metadata"]["resourceVersion"] = k.next_rv()
        k.rayclusters[key] = patched
        self._send(200, patched)


class FakeKubeServer:
    """``with FakeKubeServer(state) as kubeconfig_path: ...`` serves on 127.0.0.1:<free port>."""

    def __init__(self, kube: FakeKube, directory: Path, namespace: str = "serving"):
        handler = type("Handler", (_Handler,), {"kube": kube})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.server.server_port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}]}))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Path:
        self.thread.start()
        return self.kubeconfig

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
