#!/usr/bin/env bash
# The tests on a fresh machine: venv + packages + test tools, demo assets (verified), then ruff, lint-imports and pytest.
# Arguments go to pytest (e.g. -k e2e, -m gpu). Sourced (tests/scripts/test_scripts.py does), it only defines offer_qemu.

# qemu-user lets a test run the INT8 variant on an emulated CPU without VNNI (tests/engines/test_int8_cpu.py). It is optional:
# when it cannot be installed (no apt, no network, a broken dpkg state) that test skips, and the tests still run.
offer_qemu() {
    if command -v qemu-x86_64 >/dev/null || [[ "$(uname -m)" != x86_64 ]]; then
        return 0
    fi
    if (( EUID != 0 )); then
        echo "test: qemu-x86_64 is missing, so the emulated-CPU INT8 test will be skipped (sudo apt-get install qemu-user)"
        return 0
    fi
    echo "test: installing qemu-user (Debian) for the emulated-CPU INT8 test"
    local log
    if ! log=$({ apt-get install -y -q qemu-user || { apt-get update -q && apt-get install -y -q qemu-user; }; } 2>&1)
    then
        echo "test: could not install qemu-user, so the emulated-CPU INT8 test will be skipped. apt-get said:"
        tail -n 3 <<<"$log" | sed 's/^/  /'
    fi
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    scripts/setup.sh --dev
    offer_qemu
    .venv/bin/edge assets fetch
    .venv/bin/ruff check edge tests benchmarks
    .venv/bin/lint-imports --no-cache   # the layers of docs/architecture.md (.importlinter)
    .venv/bin/shellcheck -x scripts/*.sh scripts/lib/*.sh
    exec .venv/bin/python -m pytest -q "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    main "$@"
fi
