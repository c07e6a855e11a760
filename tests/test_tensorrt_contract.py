"""Contract tests of `edge build` and plan loading against tests/fake_tensorrt.py, a stand-in that
follows TensorRT's documented Python API (TensorRT exists only on the Jetson; tests marked
`jetson` run the real thing there). On this CPU tier the CUDA context is a no-op stand-in too:
the builder only needs it current, and the GPU tier (tests/test_gpu.py) uses real pycuda."""
from __future__ import annotations

import contextlib
import enum
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import bundle
from edge.backends import tensorrt as trt_backend
from edge.errors import EngineError
from edge.tools import build
from tests import fake_tensorrt
from tests.models import conv_model, make_dynamic

BOARD = fake_tensorrt.BOARD


class _NoContext:
    """Stand-in for edge.cuda.Context where there is no GPU (CPU tier only)."""

    def __init__(self, device: int = 0) -> None:
        self.detached = False

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        yield

    def detach(self) -> None:
        self.detached = True


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(fake_tensorrt, "BOARD", BOARD)
    monkeypatch.setattr("edge.bundle.read_board", lambda root=Path("/"): BOARD)
    monkeypatch.setattr("edge.bundle.read_l4t", lambda root=Path("/"): "36.4.3")
    if "pycuda" not in sys.modules:
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            monkeypatch.setattr("edge.cuda.compute_capability", lambda device=0: "8.7")
            monkeypatch.setattr("edge.cuda.Context", _NoContext)
    return fake_tensorrt


@pytest.fixture
def repo(demo, tmp_path: Path) -> Path:
    root = tmp_path / "yolov3-tiny"
    shutil.copytree(demo.engines, root)
    return root


def test_build_int8_variant_writes_plan_sidecar_and_manifest(trt, repo: Path) -> None:
    said: list[str] = []
    result = build.build(repo / "yolov3-tiny.int8.qdq.onnx", say=said.append)
    assert result.plan.parent == repo / "plans" and result.plan.read_bytes().startswith(trt.MAGIC)
    side = json.loads(result.sidecar.read_text())
    assert side["device"] == {"board": BOARD, "l4t": "36.4.3", "tensorrt": trt.__version__,
                              "sm": side["device"]["sm"], "precision": "int8",
                              "input_shapes": {"images": [1, 3, 416, 416]}}
    assert side["plan_sha256"] == bundle.sha256_file(result.plan)
    assert side["source"]["sha256"] == bundle.sha256_file(repo / "yolov3-tiny.int8.qdq.onnx")
    assert "edge.yolo" in side["metadata"]
    assert any("Building engine (2 steps)" in line for line in said)                  # progress monitor
    manifest = bundle.Manifest.load(repo)
    plan = next(v for v in manifest.variants if v.format == "plan")
    assert plan.precision == "int8" and plan.source_sha256 == side["source"]["sha256"]
    here = bundle.DeviceKey(BOARD, "36.4.3", trt.__version__, side["device"]["sm"])
    assert bundle.resolve(manifest, "int8", device=here, allow_onnx=False).format == "plan"


def test_build_configures_the_builder_as_documented(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    original_network = trt.Builder.create_network
    original_config = trt.Builder.create_builder_config
    monkeypatch.setattr(trt.Builder, "create_network",
                        lambda self, flags=0: seen.setdefault("network", original_network(self, flags)))
    monkeypatch.setattr(trt.Builder, "create_builder_config",
                        lambda self: seen.setdefault("config", original_config(self)))
    build.build(repo / "yolov3-tiny.fp16.onnx", workspace_mb=256, dla_core=1, say=lambda line: None)
    assert seen["network"].flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    config = seen["config"]
    assert config.pool_limits[trt.MemoryPoolType.WORKSPACE] == 256 << 20
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert trt.BuilderFlag.GPU_FALLBACK in config.flags and trt.BuilderFlag.FP16 not in config.flags


def test_timing_cache_is_reused(trt, repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "orin.cache"
    build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=lambda line: None)
    first = cache.read_bytes()
    build.build(repo / "yolov3-tiny.fp16.onnx", timing_cache=cache, say=lambda line: None)
    entries = lambda blob: json.loads(blob[len(b"FAKECACHE"):])  # noqa: E731
    assert len(entries(first)) == 1
    assert entries(cache.read_bytes())[:1] == entries(first) and len(entries(cache.read_bytes())) == 2
    cache.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="invalid serialized timing cache"):
        build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=lambda line: None)


def test_dynamic_shapes_need_a_profile(trt, tmp_path: Path) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 64, 64], out_channels=4, stride=1),
                        {"images": 0})
    with pytest.raises(EngineError, match=r"input images of .* is dynamic \[-1, 3, 64, 64\]") as info:
        build.build(path, say=lambda line: None)
    assert "--shapes images:MIN,OPT,MAX" in str(info.value)
    result = build.build(path, shapes=["images:1x3x64x64,2x3x64x64,4x3x64x64"], say=lambda line: None)
    assert result.device.input_shapes == (("images", (2, 3, 64, 64)),)
    with pytest.raises(EngineError, match="not inputs of"):
        build.build(path, shapes=["pixels:1x3x64x64"], say=lambda line: None)
    with pytest.raises(EngineError, match="does not fit the model's"):
        build.build(path, shapes=["images:1x3x32x32"], say=lambda line: None)


@pytest.mark.parametrize("spec,message", [("images:1x3xAx4", "must be integers"), ("1x3x4x4", "must be NAME:"),
                                          ("images:4x3x4x4,1x3x4x4,4x3x4x4", "MIN <= OPT <= MAX"),
                                          ("images:1x3x4,1x3x4x4,1x3x4x4", "must be NAME:")])
def test_bad_shape_specs(spec: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        build.parse_shapes([spec])


def test_legacy_fp16_path(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    original = trt.Builder.create_builder_config
    monkeypatch.setattr(trt.Builder, "create_builder_config", lambda self: seen.setdefault("c", original(self)))
    build.build(repo / "yolov3-tiny.onnx", legacy_fp16=True, say=lambda line: None)
    assert trt.BuilderFlag.FP16 in seen["c"].flags
    trt11_flags = enum.IntEnum("BuilderFlag", {"GPU_FALLBACK": 5})  # TensorRT 11 removed the precision flags
    monkeypatch.setattr(trt, "BuilderFlag", trt11_flags)
    monkeypatch.setattr(trt, "__version__", "11.4.1.2")
    with pytest.raises(EngineError, match="--legacy-fp16 needs TensorRT 10.x"):
        build.build(repo / "yolov3-tiny.onnx", legacy_fp16=True, say=lambda line: None)


def test_build_failures_are_reported(trt, repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt, "DLA_UNSUPPORTED", {"Resize"})
    monkeypatch.setattr(trt.IBuilderConfig, "set_flag", lambda self, flag: None)   # GPU fallback ignored
    with pytest.raises(EngineError, match="TensorRT failed to build") as info:
        build.build(repo / "yolov3-tiny.onnx", dla_core=0, say=lambda line: None)
    assert "DLA does not support Resize" in str(info.value)
    monkeypatch.setattr(trt.OnnxParser, "parse", lambda self, model: self.errors.append(
        trt._ParserError("Unsupported operator Foo")) or False)
    with pytest.raises(EngineError, match="ONNX parser rejected") as info:
        build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    assert "Unsupported operator Foo" in str(info.value)
    assert not list((repo / "plans").glob("*.plan"))                   # nothing half-built was left
    with pytest.raises(EngineError, match="output directory does not exist"):
        build.build(repo / "yolov3-tiny.onnx", plan_path=tmp_path / "no" / "x.plan", say=lambda line: None)


def test_missing_tensorrt_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)                # import tensorrt -> ImportError
    with pytest.raises(EngineError, match="`import tensorrt` failed") as info:
        build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    assert "python3-libnvinfer" in str(info.value)
    assert trt_backend.device_key() is None


def test_deserialize_failure_reports_the_logger(trt, tmp_path: Path) -> None:
    logger = trt_backend.make_logger(trt)
    runtime = trt.Runtime(logger)
    with pytest.raises(EngineError, match="could not deserialize") as info:
        trt_backend.deserialize(trt, runtime, b"not a plan", logger, tmp_path / "x.plan")
    assert "magicTag" in str(info.value)


def test_foreign_device_plan_is_refused(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    monkeypatch.setattr(trt, "BOARD", "NVIDIA Jetson Orin Nano Developer Kit")     # now loading elsewhere
    logger = trt_backend.make_logger(trt)
    with pytest.raises(EngineError, match="built on another device model") as info:
        trt_backend.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    assert "different models of devices" in str(info.value)


def test_io_specs(trt, repo: Path) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    logger = trt_backend.make_logger(trt)
    engine = trt_backend.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    inputs, outputs = trt_backend.io_specs(trt, engine, result.plan, {})
    assert [(t.name, t.shape) for t in inputs] == [("images", (1, 3, 416, 416))]
    assert [(t.name, t.shape) for t in outputs] == [("yolo0_13x13", (1, 255, 13, 13)),
                                                    ("yolo1_26x26", (1, 255, 26, 26))]


def test_engine_refuses_plan_of_another_device_before_loading(trt, repo: Path, monkeypatch) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    monkeypatch.setattr("edge.bundle.read_l4t", lambda root=Path("/"): "38.2.0")    # JetPack upgraded since
    with pytest.raises(EngineError, match="refusing .*built for .*36.4.3.*this device is .*38.2.0") as info:
        trt_backend.TensorRTEngine(result.plan).activate()
    assert "rebuild it here: edge build" in str(info.value)
    result.sidecar.unlink()
    with pytest.raises(EngineError, match="has no readable sidecar"):
        trt_backend.TensorRTEngine(result.plan).activate()


def test_cli_build_without_tensorrt(repo: Path) -> None:
    from tests.daemon import run

    result = run("build", str(repo / "yolov3-tiny.onnx"))
    assert result.returncode == 1 and "`import tensorrt` failed" in result.stderr


def test_dynamic_plan_runs_at_the_shape_it_was_built_for(trt, tmp_path: Path) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 64, 64], out_channels=4, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x64x64,2x3x64x64,4x3x64x64"], say=lambda line: None)
    logger = trt_backend.make_logger(trt)
    engine = trt_backend.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    assert engine.get_tensor_shape("images") == (-1, 3, 64, 64)
    inputs, outputs = trt_backend.io_specs(trt, engine, result.plan, dict(result.device.input_shapes))
    assert inputs[0].shape == (2, 3, 64, 64) and outputs[0].shape == (2, 4, 64, 64)
    with pytest.raises(EngineError, match="the sidecar has no shape for it"):
        trt_backend.io_specs(trt, engine, result.plan, {})
