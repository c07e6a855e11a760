#!/usr/bin/env bash
# Create .venv in the checkout and install edge into it.
#   scripts/setup.sh          runtime + model toolchain (+ pip OpenCV on PCs)
#   scripts/setup.sh --dev    also the test tools
# On a Jetson the venv sees the system site packages (JetPack's TensorRT and OpenCV with GStreamer),
# and no pip OpenCV is installed over them.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=()
[[ "${1:-}" == "--dev" ]] && extras+=(dev)

pick_python() {
    for py in "${EDGE_PYTHON:-}" python3 python3.12 python3.11 python3.10; do
        [[ -n "$py" ]] && command -v "$py" >/dev/null || continue
        if "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
            echo "$py"; return 0
        fi
    done
    echo "setup: no Python 3.10-3.12 found (set EDGE_PYTHON=/path/to/python3.x)" >&2
    return 1
}

venv_args=()
if [[ -f /etc/nv_tegra_release ]]; then
    venv_args+=(--system-site-packages)
else
    extras+=(cv)
fi
extras+=(tools)   # the demo assets include FP16 and INT8 variants made by the model toolchain

if [[ ! -x .venv/bin/python ]]; then
    py=$(pick_python)
    "$py" -m venv "${venv_args[@]}" .venv || {
        echo "setup: '$py -m venv' failed. Hint: sudo apt-get install python3-venv" >&2; exit 1; }
fi
# Skip pip when .venv already has these extras, installed from this setup.py and these constraints
# (edge itself is an editable install: code changes need no reinstall).
stamp=.venv/.edge-setup
inputs=$(cat setup.py scripts/constraints.txt | sha256sum | cut -c1-16)
installed=()
if [[ -f $stamp ]] && [[ "$(head -n1 "$stamp")" == "$inputs" ]]; then
    mapfile -t installed < <(tail -n +2 "$stamp")
fi
missing=()
for extra in "${extras[@]}"; do
    [[ " ${installed[*]} " == *" $extra "* ]] || missing+=("$extra")
done
if (( ${#installed[@]} )) && (( ! ${#missing[@]} )); then
    echo "setup: .venv is up to date (edge with ${installed[*]})"
    exit 0
fi

spec="."
if (( ${#extras[@]} )); then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
echo "setup: installing edge $spec into .venv with the versions CI tested (scripts/constraints.txt)"
# pip's own lines say what it installs; "already satisfied" lines and setuptools' editable-install banner
# (PYTHONWARNINGS reaches pip's build subprocess) say nothing useful.
pip_install() {
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" \
        | sed -u '/^Requirement already satisfied/d'
}
pip_install --upgrade pip
pip_install -c scripts/constraints.txt -e "$spec"
printf '%s\n' "$inputs" $(printf '%s\n' "${installed[@]}" "${extras[@]}" | sort -u) > "$stamp"
echo "setup: edge installed in .venv ($spec)"
