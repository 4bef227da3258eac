#!/usr/bin/env bash
# Run every test (CPU; tests/gpu run too where CUDA is present), after ruff and mypy. Installs what it needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh" test
cd "$root"
# Lint and type-check first ([tool.ruff], [tool.mypy] in pyproject.toml): a violation fails the run,
# and CI with it. TIERSERVE_SKIP_LINT=1 skips both (a quick local run of a few tests).
if [ "${TIERSERVE_SKIP_LINT:-0}" != 1 ]; then
  echo "[test] ruff check" >&2
  python -m ruff check .
  echo "[test] mypy" >&2
  python -m mypy
fi
exec python -m pytest "$@"
