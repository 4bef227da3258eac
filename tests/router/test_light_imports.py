"""The router and the dispatcher start without torch or triton: they run no model (router/server.py
took 57 engine and router modules, torch among them, for one result dataclass)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "triton", "transformers")


@pytest.mark.parametrize("module", ["router.server", "cluster.dispatcher", "router.generation"])
def test_module_imports_no_model_code(module):
    check = (f"import sys, {module}\n"
             f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
             "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
