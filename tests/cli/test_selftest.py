"""`edge selftest` on this machine: CPU parts pass, CUDA/TensorRT are skipped unless required."""
from __future__ import annotations

import pytest

from tests.support.daemon import run


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


def test_selftest_fails_when_the_demo_engine_repository_is_broken(demo, tmp_path) -> None:
    import shutil

    shutil.copytree(demo.engines, tmp_path / "cache" / "engines" / "yolov3-tiny")
    shutil.copytree(demo.root / "images", tmp_path / "cache" / "images")
    (tmp_path / "cache" / "engines" / "yolov3-tiny" / "manifest.json").write_text("{not json")
    result = run("selftest", extra_env={"EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.split()[:3] == ["FAIL", "demo", "engines"])
    assert "not valid JSON" in line and "edge assets fetch --rebuild" in line
    assert "FAILED: demo engines" in result.stdout


def test_selftest_fails_on_a_corrupt_variant_of_the_demo(demo, tmp_path) -> None:
    """Issue 16, item 20: a 0-byte int8 variant was listed as present and passed (only fp32 was checked). Every
    variant's file is checked against the sha256 the manifest records (edge/engines/repository.py, file_problem)."""
    import shutil

    repo = tmp_path / "cache" / "engines" / "yolov3-tiny"
    shutil.copytree(demo.engines, repo)
    shutil.copytree(demo.root / "images", tmp_path / "cache" / "images")
    (repo / "yolov3-tiny.int8.qdq.onnx").write_bytes(b"")
    result = run("selftest", extra_env={"EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.split()[:3] == ["FAIL", "demo", "engines"])
    assert "int8 onnx yolov3-tiny.int8.qdq.onnx: sha256 e3b0c44298fc... does not match the manifest's" in line
    assert "fp16" not in line and line.endswith("Hint: edge assets fetch --rebuild")
    assert "FAILED: demo engines" in result.stdout


def test_selftest_reports_what_the_supervisor_will_read(tmp_path, monkeypatch) -> None:
    """On a Jetson, no temperature is a failure (the supervisor could only hold NORMAL); a board with a
    thermal zone passes with its readings. The sysfs tree is a temporary one laid out as on an Orin."""
    from edge.cli import selftest

    monkeypatch.setitem(__import__("sys").modules, "jtop", None)          # no jetson-stats: auto goes to sysfs
    monkeypatch.setattr(selftest, "on_jetson", lambda: True)
    check = selftest._telemetry(tmp_path)
    assert check.status == "FAIL" and "sudo systemctl start jtop" in check.detail
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("tj-thermal\n")
    (zone / "temp").write_text("45500\n")
    check = selftest._telemetry(tmp_path)
    assert check.status == "ok" and check.detail.startswith("sysfs: tj 45.5 °C")
    monkeypatch.setattr(selftest, "on_jetson", lambda: False)
    assert selftest._telemetry(tmp_path / "empty").status == "skip"


def test_without_cuda_bindings_the_cuda_graphs_line_says_what_failed_and_how_to_install_it(monkeypatch) -> None:
    """Where `import cuda.bindings.driver` fails (cuda-bindings, or its cuda-pathfinder, not installed), the line is
    a skip naming the module, the import error and the pip line for the board's CUDA; what runs before the capture
    (context, letterbox kernel, buffers) is tests/support/fake_cuda.py here, and all of it is freed."""
    import sys

    from edge.cli import selftest
    from tests.support import fake_cuda

    ledger = fake_cuda.install(monkeypatch)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)                # no cuda-bindings
    check = selftest._cuda_graph()
    assert check.status == "skip", check.detail
    assert check.detail.startswith("CUDA graphs need cuda-bindings, and `import cuda.bindings.driver` failed (import"
                                   " of cuda.bindings halted; None in sys.modules). Hint: set cuda_graph: false")
    assert "pip install 'cuda-bindings==12.*' on JetPack 6" in check.detail
    assert ledger.live == {}


@pytest.mark.gpu
def test_selftest_reports_the_gpu() -> None:
    """On a GPU machine: the device, whether it is integrated, the pinned upload bandwidth, and the
    preprocessing kernel against the CPU letterbox (identical output)."""
    from edge.cli import selftest

    cuda = selftest._cuda(True)
    assert cuda.status == "ok" and ("discrete" in cuda.detail or "integrated" in cuda.detail)
    assert "GB/s" in cuda.detail and "pinned copy round trip exact" in cuda.detail
    kernel = selftest._gpu_preprocess()
    assert kernel.status == "ok" and "max abs difference 0" in kernel.detail, kernel.detail
    graphs = selftest._cuda_graph()
    assert graphs.status == "ok" and "max abs difference 0" in graphs.detail and "per launch" in graphs.detail, \
        graphs.detail
