#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make ./.venv with everything tierserve needs, once.
# Installs a CPU build of torch where none is present, the package itself (editable),
# and a redis-server binary (Debian package) when the machine has none.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
stamp="$root/.venv/.tierserve-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$root${extras:+[$extras]}"
  touch "$stamp"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)..." >&2
  if [ "$(id -u)" = 0 ]; then sudo_=""; else sudo_="sudo"; fi
  $sudo_ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq redis-server >/dev/null
fi
