#!/usr/bin/env bash
# The tests on a fresh machine: venv + packages + test tools, demo assets (verified), then ruff and pytest.
# Arguments go to pytest (e.g. -k e2e, -m gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# qemu-user lets a test run the INT8 variant on an emulated CPU without VNNI (tests/test_int8_cpu.py).
if ! command -v qemu-x86_64 >/dev/null && [[ "$(uname -m)" == x86_64 ]]; then
    if (( EUID == 0 )); then
        echo "test: installing qemu-user (Debian) for the emulated-CPU INT8 test"
        apt-get install -y -q qemu-user >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q qemu-user >/dev/null; }
    else
        echo "test: qemu-x86_64 is missing, so the emulated-CPU INT8 test will be skipped (sudo apt-get install qemu-user)"
    fi
fi
.venv/bin/edge assets fetch
.venv/bin/ruff check edge tests benchmarks
.venv/bin/shellcheck scripts/*.sh
exec .venv/bin/python -m pytest -q "$@"
