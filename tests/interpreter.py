"""Running a test file's ``case_*`` functions in a child pytest under Triton's interpreter.

Triton picks interpreter or compiler when a function is decorated (its own library
functions included), so the flag cannot be switched on inside a running pytest session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_interpreter_cases(test_file: str) -> None:
    """Run ``test_file``'s ``case_*`` functions with TRITON_INTERPRET=1; fail with their report."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            "-o", "python_functions=case_*", str(Path(test_file).resolve().relative_to(REPO))],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"interpreter cases failed:\n{child.stdout[-6000:]}\n{child.stderr[-2000:]}"
    assert " passed" in child.stdout and " skipped" not in child.stdout, child.stdout[-2000:]
