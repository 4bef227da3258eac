"""Benchmark scripts run as `python benchmarks/X.py` put benchmarks/ first on sys.path, so a module
there named like one of our packages hides that package from every import in the run (CI once failed
on benchmarks/attention_offload.py hiding the attention_offload package)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def top_level_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_no_benchmark_module_shadows_a_package():
    packages = top_level_packages()
    assert {"engine", "attention_offload", "cluster"} <= packages
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert not modules & packages, f"benchmarks/ modules named like packages: {sorted(modules & packages)}"
