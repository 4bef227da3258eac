#!/usr/bin/env bash
# The main job on the embedded default: a tiny model, a few requests. Installs what it needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh"
cd "$root"
exec tierserve demo "$@"
