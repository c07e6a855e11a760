#!/usr/bin/env bash
# The tests on a fresh machine: venv + packages + test tools, demo assets (verified), then pytest.
# Arguments go to pytest (e.g. -k e2e, -m gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/edge assets fetch
.venv/bin/ruff check edge tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
