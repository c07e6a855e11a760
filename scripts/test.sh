#!/usr/bin/env bash
# The tests on a fresh machine: venv + packages + test tools, demo assets (verified), then ruff, lint-imports and pytest.
# Arguments go to pytest (e.g. -k e2e, -m gpu). Sourced (tests/scripts/test_scripts.py does), it only defines
# offer_packages.

# Optional Debian packages for tests that use real parts (docs/testing.md), installed in one apt-get call when run as
# root. When they cannot be installed (no apt, no network, a broken dpkg state) those tests skip with the reason, and
# the tests still run:
# - qemu-user: the INT8 variant on an emulated CPU without VNNI (tests/engines/test_int8_cpu.py), on x86-64 hosts;
# - GStreamer with PyGObject and its RTSP server: a Jetson's decode pipelines on software stand-ins and a real RTSP
#   camera (tests/pipeline/test_gstreamer*.py, test_runtime_decoding.py, test_nvdec.py; the lists the tests name are
#   tests/support/fake_jetson.py PACKAGES and tests/support/rtsp.py PACKAGES), and iproute2 and iptables for its
#   packet loss in a network namespace where the kernel has no sch_netem (tests/pipeline/test_gaps.py);
# - Mender's client and artifact tool: real fleet deployments of engine bundles through edge's Update Module
#   (tests/deploy/test_mender.py; tests/support/mender.py PACKAGES).
GSTREAMER_PACKAGES=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
                    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
                    gstreamer1.0-rtsp iproute2 iptables)
MENDER_PACKAGES=(mender-client mender-artifact)

offer_packages() {
    local wanted=() package
    if [[ "$(uname -m)" == x86_64 ]] && ! command -v qemu-x86_64 >/dev/null; then
        wanted+=(qemu-user)
    fi
    for package in "${GSTREAMER_PACKAGES[@]}" "${MENDER_PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]]; then
            wanted+=("$package")
        fi
    done
    if (( ${#wanted[@]} == 0 )); then
        return 0
    fi
    if (( EUID != 0 )); then
        echo "test: ${wanted[*]} missing, so the tests that need them will be skipped" \
             "(sudo apt-get install --no-install-recommends ${wanted[*]})"
        return 0
    fi
    echo "test: installing ${wanted[*]} (Debian) for the tests that need them"
    local log install=(apt-get install -y -q --no-install-recommends "${wanted[@]}")
    if ! log=$({ "${install[@]}" || { apt-get update -q && "${install[@]}"; }; } 2>&1); then
        echo "test: could not install ${wanted[*]}, so the tests that need them will be skipped. apt-get said:"
        tail -n 3 <<<"$log" | sed 's/^/  /'
    fi
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    scripts/setup.sh --dev
    offer_packages
    .venv/bin/edge assets fetch
    .venv/bin/ruff check edge tests benchmarks
    .venv/bin/lint-imports --no-cache   # the layers of docs/architecture.md (.importlinter)
    .venv/bin/shellcheck -x scripts/*.sh scripts/lib/*.sh scripts/mender/edge-bundle
    exec .venv/bin/python -m pytest -q "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    main "$@"
fi
