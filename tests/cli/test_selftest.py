"""`edge selftest` on this machine: CPU parts pass, CUDA/TensorRT are skipped unless required."""
from __future__ import annotations

import re
import sys

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


def test_selftest_decodes_a_clip_on_each_path_with_fps_and_cpu_a_frame(monkeypatch, tmp_path) -> None:
    """On a Jetson (NVIDIA's elements: software stand-ins, tests/support/fake_jetson.py) `decode nvdec` is the
    cameras' own choice (edge/pipeline/runtime.py, Decoding): GStreamer's reader, device BGRx frames."""
    from edge.cli import selftest
    from tests.support import clips, fake_cuda, fake_jetson

    fake_cuda.install(monkeypatch)
    path = clips.encode(clips.small("libx264"), tmp_path / "road.mp4")
    with fake_jetson.installed():
        cpu, nvdec = selftest._decode_checks(path)
    assert (cpu.name, cpu.status, nvdec.name, nvdec.status) == ("decode cpu", "ok", "decode nvdec", "ok"), (cpu, nvdec)
    pattern = r"road\.mp4 320x240: 20 frames, \d+ fps, \d+\.\d\d ms CPU a frame \({} frames\)"
    assert re.fullmatch(pattern.format("host BGR"), cpu.detail), cpu.detail
    assert re.fullmatch(pattern.format("device bgrx"), nvdec.detail), nvdec.detail


def test_selftest_without_nvdec_skips_it_with_the_reason_but_fails_on_a_jetson(monkeypatch, tmp_path) -> None:
    """Off a Jetson `decode nvdec` is PyNvVideoCodec's; where it is missing, the line says so and how to get it."""
    from edge.cli import selftest
    from tests.support import clips

    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    path = clips.encode(clips.small("libx264", 3), tmp_path / "road.mp4")
    cpu, nvdec = selftest._decode_checks(path)
    assert cpu.status == "ok"
    assert (nvdec.status, nvdec.detail) == ("skip", "road.mp4: PyNvVideoCodec is not installed. Hint: pip install"
                                                    " 'edge[nvdec]' (PyNvVideoCodec 2.2.4) on a PC with an NVIDIA GPU"
                                                    " and driver")
    monkeypatch.setattr(selftest, "on_jetson", lambda: True)
    assert selftest._decode_checks(path)[1].status == "FAIL"


def test_selftest_without_a_clip_says_where_one_comes_from(monkeypatch, tmp_path) -> None:
    from edge.cli import selftest

    monkeypatch.setattr(selftest, "DECODE_CLIP", tmp_path / "absent.h264")
    (check,) = selftest._decode_checks(None)
    assert (check.name, check.status) == ("decode", "skip")
    assert "edge selftest --clip VIDEO" in check.detail and "nvidia-l4t-jetson-multimedia-api" in check.detail
    missing, _ = selftest._decode_checks(tmp_path / "gone.mp4")    # named, not there: the CPU path fails
    assert missing.status == "FAIL" and "camera file does not exist" in missing.detail
