"""`tierserve simulate` / `plan` start without torch or Ray (their import took 5-7 s of start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys
from cluster.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "ray", "triton", "transformers") if m in sys.modules)
assert rc == 0 and not heavy, (rc, heavy)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_simulate_imports_neither_torch_nor_ray():
    done = _run("simulate", "--trace", "synthetic:n=200,rate=5,seed=1", "--design", "prefill=H100x1,decode=H100x1")
    assert done.returncode == 0, done.stderr
    assert "completed 200" in done.stdout


def test_plan_help_imports_neither_torch_nor_ray():
    caught = "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code"
    done = subprocess.run([sys.executable, "-c", CHECK.replace("rc = main(sys.argv[1:])", caught),
                           "plan", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--slo" in done.stdout
