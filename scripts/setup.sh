#!/usr/bin/env bash
# Create .venv in the checkout and install edge into it.
#   scripts/setup.sh            runtime + model toolchain (+ pip OpenCV on PCs)
#   scripts/setup.sh --dev      also the test tools
#   scripts/setup.sh --dry-run  say what it would install, and change nothing
# On a Jetson the venv sees the system site packages (JetPack's TensorRT and OpenCV with GStreamer),
# no pip OpenCV is installed over them, NumPy stays below 2 (JetPack's cv2 is built against 1.x), and the
# `jetson` extra brings pycuda (built here against JetPack's CUDA, so nvcc must be there) and jetson-stats
# (the jtop client).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=()
dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dev) extras+=(dev) ;;
        --dry-run) dry_run=1 ;;
        --help|-h) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "setup: unknown option '$arg' (use --dev, --dry-run, --help)" >&2; exit 2 ;;
    esac
done
tegra_release=${EDGE_TEGRA_RELEASE:-/etc/nv_tegra_release}   # tests point it at a file of their own

pick_python() {
    for py in "${EDGE_PYTHON:-}" python3 python3.12 python3.11 python3.10; do
        if [[ -z "$py" ]] || ! command -v "$py" >/dev/null; then continue; fi
        if "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
            echo "$py"; return 0
        fi
    done
    echo "setup: no Python 3.10-3.12 found (set EDGE_PYTHON=/path/to/python3.x)" >&2
    return 1
}

# pycuda compiles against the CUDA toolkit: $CUDA_ROOT if set, else JetPack's /usr/local/cuda, else the
# toolkit of the nvcc on PATH.
find_cuda() {
    local root=${CUDA_ROOT:-}
    if [[ -z "$root" ]]; then
        if [[ -x /usr/local/cuda/bin/nvcc ]]; then
            root=/usr/local/cuda
        elif command -v nvcc >/dev/null; then
            root=$(dirname "$(dirname "$(command -v nvcc)")")
        fi
    fi
    if [[ -z "$root" || ! -x "$root/bin/nvcc" ]]; then
        echo "setup: this is a Jetson, but no CUDA toolkit was found (no nvcc in ${root:-/usr/local/cuda}/bin nor on" \
             "PATH): pycuda cannot be built. Hint: sudo apt-get install nvidia-jetpack, or set CUDA_ROOT" >&2
        return 1
    fi
    CUDA_ROOT=$root
    export CUDA_ROOT PATH="$CUDA_ROOT/bin:$PATH"
    # cuda-bindings (CUDA graphs, cuda_graph: true) must match the CUDA major version: 12 on JetPack 6, 13 on 7
    cuda_major=$("$CUDA_ROOT/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')
    if [[ -z "$cuda_major" ]]; then
        echo "setup: '$CUDA_ROOT/bin/nvcc --version' names no CUDA release; cannot pick cuda-bindings." \
             "Hint: reinstall the toolkit (sudo apt-get install nvidia-jetpack), or set CUDA_ROOT" >&2
        return 1
    fi
    pip_extra+=("cuda-bindings==$cuda_major.*")
}

venv_args=()
pip_extra=()
constraints=(-c scripts/constraints.txt)
if [[ -f "$tegra_release" ]]; then
    venv_args+=(--system-site-packages)
    extras+=(jetson)
    find_cuda
    # JetPack's cv2, seen through --system-site-packages, is built against NumPy 1.x: with NumPy 2 in the venv
    # `import cv2` fails ("_ARRAY_API not found"). CI's pins (x86-64: NumPy 2, and ml_dtypes that needs it) would
    # contradict this on JetPack 7's Python 3.12, so they are not used here.
    pip_extra+=("numpy<2")
    constraints=()
else
    extras+=(cv)
fi
extras+=(tools)   # the demo assets include FP16 and INT8 variants made by the model toolchain

if (( dry_run )); then
    notes=("${pip_extra[@]}")
    if [[ -n "${CUDA_ROOT:-}" ]]; then notes=("pycuda against $CUDA_ROOT" "${notes[@]}"); fi
    if (( ${#constraints[@]} )); then notes+=("the versions CI tested (scripts/constraints.txt)"); fi
    echo "setup: would install edge[$(IFS=,; echo "${extras[*]}")] into .venv${venv_args[*]:+ (venv ${venv_args[*]})}" \
         "with $(pick_python)$(printf ', %s' "${notes[@]}")"
    exit 0
fi

if [[ ! -x .venv/bin/python ]]; then
    py=$(pick_python)
    "$py" -m venv "${venv_args[@]}" .venv || {
        echo "setup: '$py -m venv' failed. Hint: sudo apt-get install python3-venv" >&2; exit 1; }
fi
# Skip pip when .venv already has these extras, installed from this setup.py, these constraints and these extra
# requirements (edge itself is an editable install: code changes need no reinstall).
stamp=.venv/.edge-setup
inputs=$(cat setup.py scripts/constraints.txt | sha256sum | cut -c1-16)
if (( ${#pip_extra[@]} )); then
    inputs=$(printf '%s\n' "$inputs" "${pip_extra[@]}" | sha256sum | cut -c1-16)
fi
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
if (( ${#constraints[@]} )); then
    echo "setup: installing edge $spec into .venv with the versions CI tested (scripts/constraints.txt)"
else
    echo "setup: installing edge $spec ${pip_extra[*]} into .venv"
fi
# pip's own lines say what it installs; "already satisfied" lines and setuptools' editable-install banner
# (PYTHONWARNINGS reaches pip's build subprocess) say nothing useful.
pip_install() {
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" \
        | sed -u '/^Requirement already satisfied/d'
}
pip_install --upgrade pip
pip_install "${constraints[@]}" -e "$spec" "${pip_extra[@]}"
mapfile -t recorded < <(printf '%s\n' "${installed[@]}" "${extras[@]}" | sort -u)
printf '%s\n' "$inputs" "${recorded[@]}" > "$stamp"
echo "setup: edge installed in .venv ($spec)"
