#!/usr/bin/env bash
# Run every test (CPU; tests/gpu run too where CUDA is present). Installs what it needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh" test
cd "$root"
exec python -m pytest "$@"
