#!/usr/bin/env bash
# Fetch, verify (sha256) and convert the demo assets into $EDGE_CACHE (default ~/.cache/edge).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/edge ]] || scripts/setup.sh
exec .venv/bin/edge assets fetch "$@"
