"""`scripts/setup.sh --dry-run`: what it installs on a PC and on a Jetson (there: the venv sees JetPack's
system packages, the `jetson` extra brings pycuda and jetson-stats, and pycuda needs a CUDA toolkit). The
Jetson is a release file and a toolkit directory of the test's own; nothing is installed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.daemon import ROOT


def dry_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts/setup.sh"), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "EDGE_TEGRA_RELEASE": str(tmp_path / "none"), **env})


def jetson(tmp_path: Path) -> tuple[Path, Path]:
    """A JetPack 6 release file and a CUDA 12.6 toolkit whose nvcc only says its version."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3\n")
    toolkit = tmp_path / "cuda"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin/nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    (toolkit / "bin/nvcc").chmod(0o755)
    return release, toolkit


def test_on_a_pc_it_installs_pip_opencv_and_no_jetson_extra(tmp_path: Path) -> None:
    result = dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "edge[cv,tools]" in result.stdout and "system-site-packages" not in result.stdout
    assert "the versions CI tested (scripts/constraints.txt)" in result.stdout and "numpy<2" not in result.stdout


def test_on_a_jetson_it_installs_pycuda_and_cuda_bindings_for_the_cuda_toolkit(tmp_path: Path) -> None:
    release, toolkit = jetson(tmp_path)
    result = dry_run(tmp_path, EDGE_TEGRA_RELEASE=str(release), CUDA_ROOT=str(toolkit))
    assert result.returncode == 0, result.stderr
    assert "edge[jetson,tools]" in result.stdout and "--system-site-packages" in result.stdout
    assert f"pycuda against {toolkit}, cuda-bindings==12.*" in result.stdout      # the board's CUDA major
    (toolkit / "bin/nvcc").write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n")
    unnamed = dry_run(tmp_path, EDGE_TEGRA_RELEASE=str(release), CUDA_ROOT=str(toolkit))
    assert unnamed.returncode == 1 and "names no CUDA release" in unnamed.stderr
    missing = dry_run(tmp_path, EDGE_TEGRA_RELEASE=str(release), CUDA_ROOT=str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "no CUDA toolkit was found" in missing.stderr and "nvidia-jetpack" in missing.stderr


def test_on_a_jetson_numpy_stays_below_2_for_jetpacks_opencv(tmp_path: Path) -> None:
    """JetPack's cv2 (through --system-site-packages) is built against NumPy 1.x; NumPy 2 in the venv breaks
    `import cv2` ("_ARRAY_API not found"). CI's x86-64 pins (NumPy 2) are not used there."""
    release, toolkit = jetson(tmp_path)
    result = dry_run(tmp_path, EDGE_TEGRA_RELEASE=str(release), CUDA_ROOT=str(toolkit))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(", cuda-bindings==12.*, numpy<2") and "constraints" not in result.stdout


def test_an_unknown_option_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([str(ROOT / "scripts/setup.sh"), "--devel"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "unknown option '--devel'" in result.stderr
