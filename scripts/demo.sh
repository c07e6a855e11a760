#!/usr/bin/env bash
# The demo on a fresh machine: venv + packages, demo assets (verified), then `edge demo`.
# Arguments go to `edge demo` (e.g. --frames 100 --save-video demo.mp4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/edge demo "$@"
