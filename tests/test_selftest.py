"""`edge selftest` on this machine: CPU parts pass, CUDA/TensorRT are skipped unless required."""
from __future__ import annotations

from tests.daemon import run


def test_selftest_passes_without_a_gpu(demo) -> None:
    result = run("selftest")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["ok", "zeromq"] for line in lines)
    assert any(line.split()[:3] == ["ok", "demo", "on"] and "dog" in line for line in lines)
    assert any(line.split()[:2] == ["skip", "tensorrt"] for line in lines)


def test_selftest_fails_when_tensorrt_is_required_and_missing(demo) -> None:
    result = run("selftest", "--require-tensorrt")
    assert result.returncode == 1
    assert "FAILED: cuda, tensorrt" in result.stdout
    assert "python3-libnvinfer" in result.stdout                  # the hint says where TensorRT comes from
