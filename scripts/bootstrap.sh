#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make ./.venv with everything tierserve needs, once.
# Installs a CPU build of torch where none is present, the package itself (editable),
# and a redis-server binary (Debian package) when the machine has none. Says what it does
# on stderr, a line per phase; pip's own output goes to .venv/install.log.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
py="${PYTHON:-python3}"
say() { echo "[setup] $*" >&2; }
log="$root/.venv/install.log"
# Run a long install step quietly, with a heartbeat line every 30 s; on failure show the log's tail.
quietly() {
  local what="$1"; shift
  local start=$SECONDS
  "$@" >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( (SECONDS - start) % 30 == 0 && SECONDS > start )); then say "  ... still $what ($((SECONDS - start)) s)"; fi
  done
  if ! wait "$pid"; then
    say "failed while $what; the last lines of $log:"
    tail -n 30 "$log" >&2
    return 1
  fi
}
if [ ! -x "$root/.venv/bin/python" ]; then
  say "creating the virtual environment $root/.venv"
  "$py" -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
stamp="$root/.venv/.tierserve-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  say "installing into .venv (first run only; a few minutes; pip's output in $log)"
  quietly "upgrading pip" python -m pip install --upgrade pip || true
  if ! python -c "import torch" 2>/dev/null; then
    say "installing torch (CPU build)"
    quietly "installing torch" python -m pip install "torch==2.13.0"
  fi
  say "installing tierserve${extras:+ with its [$extras] extras} and its dependencies"
  quietly "installing dependencies" python -m pip install -e "$root${extras:+[$extras]}"
  touch "$stamp"
  say "installed"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server (Debian package)"
  if [ "$(id -u)" = 0 ]; then sudo_=""; else sudo_="sudo"; fi
  $sudo_ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq redis-server >/dev/null
fi
