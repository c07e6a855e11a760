"""Contract tests of `edge build` and plan loading against tests/support/fake_tensorrt.py, a stand-in that
follows TensorRT's Python bindings and headers, failures included (TensorRT exists only on the
Jetson; tests marked `jetson` run the real thing there). On this CPU tier CUDA is a stand-in too:
the builder only needs a context current, and slots only need streams and buffers to exist; the
GPU tier (tests/gpu/test_gpu.py) uses real pycuda. Context lifetime is tested against a stand-in of
pycuda's context stack (as pycuda's src/cpp/cuda.hpp implements it), and on a GPU for real."""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge.engines import repository
from edge.engines.base import LetterboxPreprocessing, Preprocessing, WaitTimeout
from edge.engines.tensorrt import build
from edge.engines.tensorrt import plan as trt_plan
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.engines.tensorrt.slot import TrtSlot
from edge.errors import EngineError, UsageError
from edge.gpu import cuda
from tests.support import fake_cuda, fake_tensorrt
from tests.support.models import conv_model, make_dynamic

BOARD = fake_tensorrt.BOARD
LETTERBOX = LetterboxPreprocessing(fill=0.5)
REAL_CONTEXT = cuda.Context


@pytest.fixture
def cuda_stand_in(monkeypatch: pytest.MonkeyPatch) -> fake_cuda.Ledger:
    """edge.gpu.cuda without a GPU, keeping a ledger of what is held (tests/support/fake_cuda.py)."""
    return fake_cuda.install(monkeypatch)


class _Driver:
    """The CUDA driver as pycuda's context calls see it: this thread's context stack, the primary context's
    retain count, and cuCtxPopCurrent (which edge.gpu.cuda calls through the driver library)."""

    def __init__(self) -> None:
        self.retains = 0
        self._local = threading.local()

    def stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def cuCtxPopCurrent_v2(self, popped: Any) -> int:  # noqa: N802 - the driver's name
        if not self.stack():
            return 201                                      # CUDA_ERROR_INVALID_CONTEXT
        self.stack().pop()
        return 0


def _pycuda(drv: _Driver) -> SimpleNamespace:
    """pycuda.driver's primary-context calls as pycuda 2026.1 implements them (src/cpp/cuda.hpp: context_push,
    context::pop, prepare_context_switch, current_context, context::detach, primary_context::detach_internal,
    which releases with cuDevicePrimaryCtxRelease and pops nothing). The device probe agreed: push, pop, detach
    left one entry on the stack; detach from another thread left the context retained."""
    local = threading.local()

    def tracked() -> list[Context]:
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def current_context(skip: Context | None = None) -> Context | None:
        while tracked():
            if tracked()[-1] is not skip and tracked()[-1].valid:
                return tracked()[-1]
            tracked().pop()
        return None

    def prepare_context_switch() -> None:
        if tracked():
            drv.stack().pop()

    class LogicError(Exception):
        pass

    class Context:
        def __init__(self) -> None:
            self.valid = True
            self.thread = threading.get_ident()
            drv.retains += 1

        def push(self) -> None:
            prepare_context_switch()
            drv.stack().append("primary")
            tracked().append(self)

        @staticmethod
        def pop() -> None:
            prepare_context_switch()
            if not tracked():
                raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
            tracked().pop()
            if current_context():
                drv.stack().append("primary")

        @staticmethod
        def get_current() -> Context | None:
            return current_context()

        def detach(self) -> None:
            active = current_context() is self
            if active:
                drv.retains -= 1
            elif self.thread == threading.get_ident():
                drv.stack().append("primary")                  # pushed to release it; "pop is implicit" is untrue
                drv.retains -= 1
            self.valid = False
            if active and current_context(skip=self):
                drv.stack().append("primary")

    class Device:
        def __init__(self, ordinal: int) -> None:
            pass

        def retain_primary_context(self) -> Context:
            return Context()

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def get_attribute(self, attribute: str) -> int:
            return 0                                        # a discrete GPU

    attributes = SimpleNamespace(INTEGRATED="INTEGRATED", CAN_MAP_HOST_MEMORY="CAN_MAP_HOST_MEMORY")
    return SimpleNamespace(Device=Device, Context=Context, Error=LogicError, device_attribute=attributes)


@pytest.fixture
def pycuda_stand_in(monkeypatch: pytest.MonkeyPatch) -> _Driver:
    drv = _Driver()
    fake = _pycuda(drv)
    monkeypatch.setattr("edge.gpu.cuda.Context", REAL_CONTEXT)
    monkeypatch.setattr("edge.gpu.cuda.driver", lambda: fake)
    monkeypatch.setattr("edge.gpu.cuda._libcuda", lambda: drv)
    return drv


@pytest.fixture
def repo(demo, tmp_path: Path) -> Path:
    root = tmp_path / "yolov3-tiny"
    shutil.copytree(demo.engines, root)
    return root


def test_build_int8_variant_writes_plan_sidecar_and_manifest(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge.engines.repository.read_device_type", lambda root=Path("/"): "jetson-agx-orin")
    said: list[str] = []
    result = build.build(repo / "yolov3-tiny.int8.qdq.onnx", say=said.append)
    assert result.plan.parent == repo / "plans" and result.plan.read_bytes().startswith(trt.MAGIC)
    side = json.loads(result.sidecar.read_text())
    assert side["device"] == {"board": BOARD, "l4t": "36.4.3", "tensorrt": trt.__version__,
                              "sm": side["device"]["sm"], "precision": "int8",
                              "input_shapes": {"images": [1, 3, 416, 416]}, "device_type": "jetson-agx-orin"}
    assert side["plan_sha256"] == repository.sha256_file(result.plan)
    assert side["source"]["sha256"] == repository.sha256_file(repo / "yolov3-tiny.int8.qdq.onnx")
    assert "edge.yolo" in side["metadata"]
    assert any("Building engine (2 steps)" in line for line in said)                  # progress monitor
    manifest = repository.Manifest.load(repo)
    plan = next(v for v in manifest.variants if v.format == "plan")
    assert plan.precision == "int8" and plan.source_sha256 == side["source"]["sha256"]
    assert plan.device is not None and plan.device.device_type == "jetson-agx-orin"
    here = repository.DeviceKey(BOARD, "36.4.3", trt.__version__, side["device"]["sm"])     # the Mender type: no match
    assert repository.resolve(manifest, "int8", device=here, allow_onnx=False).format == "plan"


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


def _cache_entries(path: Path) -> list[str]:
    return json.loads(path.read_bytes()[len(fake_tensorrt.CACHE_MAGIC):])["entries"]


def test_timing_cache_is_reused(trt, repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "orin.cache"
    build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=lambda line: None)
    first = _cache_entries(cache)
    build.build(repo / "yolov3-tiny.fp16.onnx", timing_cache=cache, say=lambda line: None)
    assert len(first) == 1 and _cache_entries(cache)[:1] == first and len(_cache_entries(cache)) == 2


@pytest.mark.parametrize("case", ["corrupt", "other device"])
def test_an_unusable_timing_cache_is_replaced_by_a_fresh_one(trt, repo: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """TensorRT does not raise: create_timing_cache logs and returns None for a corrupt blob, set_timing_cache
    returns False for a cache from another device. The build goes on with a fresh cache and says so."""
    cache = tmp_path / "orin.cache"
    if case == "corrupt":
        cache.write_bytes(b"garbage")
    else:
        monkeypatch.setattr(trt, "BOARD", "NVIDIA Jetson Orin Nano Developer Kit")
        build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=lambda line: None)
        monkeypatch.setattr(trt, "BOARD", BOARD)
    said: list[str] = []
    result = build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=said.append)
    assert result.plan.is_file()
    message = next(line for line in said if "cannot be used here" in line)
    assert ("corrupt" if case == "corrupt" else "different properties") in message
    assert json.loads(cache.read_bytes()[len(trt.CACHE_MAGIC):])["device"] == BOARD
    assert len(_cache_entries(cache)) == 1                             # the fresh cache, saved


def test_the_plan_is_written_before_the_timing_cache_and_kept_when_the_cache_fails(
        trt, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    original = build.atomic_output

    @contextlib.contextmanager
    def recording(path: Path) -> Iterator[Path]:
        with original(path) as tmp:
            yield tmp
        written.append(path.suffix)
    monkeypatch.setattr(build, "atomic_output", recording)
    cache = tmp_path / "orin.cache"
    build.build(repo / "yolov3-tiny.onnx", timing_cache=cache, say=lambda line: None)
    assert written == [".plan", ".json", ".cache"]
    before = cache.read_bytes()
    monkeypatch.setattr(trt.ITimingCache, "serialize", lambda self: None)    # TensorRT returns None on failure
    said: list[str] = []
    result = build.build(repo / "yolov3-tiny.fp16.onnx", timing_cache=cache, say=said.append)
    assert result.plan.is_file() and cache.read_bytes() == before
    assert any("did not serialize the timing cache; the plan is kept" in line for line in said)


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
    for name, value in trt.TENSORRT_11.items():                    # TensorRT 11 removed the precision flags
        monkeypatch.setattr(trt, name, value)
    with pytest.raises(EngineError, match="--legacy-fp16 needs TensorRT 10.x"):
        build.build(repo / "yolov3-tiny.onnx", legacy_fp16=True, say=lambda line: None)


def test_tensorrt_11_builds_strongly_typed_networks(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    original = trt.Builder.create_network
    monkeypatch.setattr(trt.Builder, "create_network",
                        lambda self, flags=0: seen.setdefault("network", original(self, flags)))
    for name, value in trt.TENSORRT_11.items():
        monkeypatch.setattr(trt, name, value)
    result = build.build(repo / "yolov3-tiny.fp16.onnx", say=lambda line: None)
    assert seen["network"].flags == 1                              # STRONGLY_TYPED is 0 in TensorRT 11
    assert result.device.tensorrt == trt.TENSORRT_11["__version__"]


def test_the_stand_in_is_as_strict_as_tensorrt(trt) -> None:
    """Values and failures the bindings and headers have (NvInfer.h, pyCore.cpp, tensorrt/__init__.py)."""
    assert trt.BuilderFlag.GPU_FALLBACK == 3 and trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED == 1
    assert trt.TENSORRT_11["NetworkDefinitionCreationFlag"].STRONGLY_TYPED == 0
    assert not hasattr(trt.TENSORRT_11["NetworkDefinitionCreationFlag"], "EXPLICIT_BATCH")
    assert not hasattr(trt.TENSORRT_11["BuilderFlag"], "FP16")
    with pytest.raises(TypeError, match="Could not resolve TensorRT datatype"):
        trt.nptype(trt.DataType.BF16)

    class Forgetful(trt.ILogger):
        def __init__(self) -> None:                                # no trt.ILogger.__init__(self)
            self.messages = []
    with pytest.raises(TypeError, match="must be called when overriding __init__"):
        Forgetful()
    assert trt_plan.make_logger(trt).text() == "(TensorRT logged nothing)"
    assert trt.IBuilderConfig(trt.Logger()).create_timing_cache(b"garbage") is None


def test_build_failures_are_reported(trt, repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt, "DLA_UNSUPPORTED", {"Resize"})
    monkeypatch.setattr(trt.IBuilderConfig, "set_flag", lambda self, flag: None)   # GPU fallback ignored
    with pytest.raises(EngineError, match="TensorRT failed to build") as info:
        build.build(repo / "yolov3-tiny.fp16.onnx", dla_core=0, say=lambda line: None)
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
    assert "python3-libnvinfer" in str(info.value) and "docs/gpu.md section 6" in str(info.value)
    assert trt_plan.device_key() is None


def test_deserialize_failure_reports_the_logger(trt, tmp_path: Path) -> None:
    logger = trt_plan.make_logger(trt)
    runtime = trt.Runtime(logger)
    with pytest.raises(EngineError, match="could not deserialize") as info:
        trt_plan.deserialize(trt, runtime, b"not a plan", logger, tmp_path / "x.plan")
    assert "magicTag" in str(info.value)


def test_foreign_device_plan_is_refused(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    monkeypatch.setattr(trt, "BOARD", "NVIDIA Jetson Orin Nano Developer Kit")     # now loading elsewhere
    logger = trt_plan.make_logger(trt)
    with pytest.raises(EngineError, match="built on another device model") as info:
        trt_plan.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    assert "different models of devices" in str(info.value)


def test_io_specs(trt, repo: Path) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    logger = trt_plan.make_logger(trt)
    engine = trt_plan.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    inputs, outputs = trt_plan.io_specs(trt, engine, result.plan, {}, logger)
    assert [(t.name, t.shape, t.dtype) for t in inputs] == [("images", (1, 3, 416, 416), np.float32)]
    assert [(t.name, t.shape) for t in outputs] == [("yolo0_13x13", (1, 255, 13, 13)),
                                                    ("yolo1_26x26", (1, 255, 26, 26))]


def test_engine_refuses_plan_of_another_device_before_loading(trt, repo: Path, monkeypatch) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    monkeypatch.setattr("edge.engines.repository.read_l4t", lambda root=Path("/"): "38.2.0")    # JetPack upgraded since
    with pytest.raises(EngineError, match="refusing .*built for .*36.4.3.*this device is .*38.2.0") as info:
        TensorRTEngine(result.plan).activate()
    assert "rebuild it here: edge build" in str(info.value)
    result.sidecar.unlink()
    with pytest.raises(EngineError, match="has no readable sidecar"):
        TensorRTEngine(result.plan).activate()


def test_cli_build_without_tensorrt(repo: Path) -> None:
    from tests.support.daemon import run

    result = run("build", str(repo / "yolov3-tiny.onnx"))
    assert result.returncode == 1 and "`import tensorrt` failed" in result.stderr


def test_dynamic_plan_runs_at_the_shape_it_was_built_for(trt, tmp_path: Path) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 64, 64], out_channels=4, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x64x64,2x3x64x64,4x3x64x64"], say=lambda line: None)
    logger = trt_plan.make_logger(trt)
    engine = trt_plan.deserialize(trt, trt.Runtime(logger), result.plan.read_bytes(), logger, result.plan)
    assert engine.get_tensor_shape("images") == (-1, 3, 64, 64)
    inputs, outputs = trt_plan.io_specs(trt, engine, result.plan, dict(result.device.input_shapes), logger)
    assert inputs[0].shape == (2, 3, 64, 64) and outputs[0].shape == (2, 4, 64, 64)
    with pytest.raises(EngineError, match="the sidecar has no shape for it"):
        trt_plan.io_specs(trt, engine, result.plan, {}, logger)


def _io_model(path: Path, elem_type: int, out_type: int) -> Path:
    """images -> Cast -> out0, with the given ONNX element types (TensorRT takes IO types from the graph)."""
    graph = helper.make_graph([helper.make_node("Cast", ["images"], ["out0"], to=out_type)], "g",
                              [helper.make_tensor_value_info("images", elem_type, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out0", out_type, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_io_types_come_from_the_plan(trt, tmp_path: Path) -> None:
    """fp16 IO gives float16 buffers; a type numpy lacks (bf16) is an EngineError, not nptype's TypeError."""
    result = build.build(_io_model(tmp_path / "half.onnx", TensorProto.FLOAT16, TensorProto.FLOAT16),
                         say=lambda line: None)
    with TensorRTEngine(result.plan) as engine:
        assert [t.dtype for t in engine.inputs + engine.outputs] == [np.float16, np.float16]
        assert engine.create_slot("cam").input().dtype == np.float16
    result = build.build(_io_model(tmp_path / "bf16.onnx", TensorProto.FLOAT, TensorProto.BFLOAT16),
                         say=lambda line: None)
    with pytest.raises(EngineError, match="tensor out0 is of TensorRT type DataType.BF16, which numpy has no type"):
        TensorRTEngine(result.plan).activate()


# Item 1: the DLA core a plan was built for is the one it runs on.

def test_a_dla_plan_runs_on_the_core_it_was_built_for(trt, repo: Path) -> None:
    result = build.build(repo / "yolov3-tiny.fp16.onnx", dla_core=1, say=lambda line: None)
    assert json.loads(result.sidecar.read_text())["dla_core"] == 1
    with TensorRTEngine(result.plan) as engine:
        assert engine.runtime.DLA_core == 1 and engine.engine.dla_core == 1     # set before deserializing
    gpu = build.build(repo / "yolov3-tiny.int8.qdq.onnx", say=lambda line: None)
    with TensorRTEngine(gpu.plan) as engine:
        assert engine.runtime.DLA_core == -1 and engine.engine.dla_core is None


def test_a_dla_plan_is_refused_where_its_core_is_missing(trt, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = build.build(repo / "yolov3-tiny.fp16.onnx", dla_core=1, say=lambda line: None)
    monkeypatch.setattr(trt, "DLA_CORES", 1)                       # an Orin NX with one DLA, say
    with pytest.raises(EngineError, match="built for DLA core 1, and this device has 1 DLA cores") as info:
        TensorRTEngine(result.plan).activate()
    assert "rebuild it here without --dla" in str(info.value)


# Item 2: DLA only for FP16/INT8 variants, only where the device has DLA cores.

def test_dla_is_refused_for_an_fp32_variant(trt, repo: Path) -> None:
    with pytest.raises(EngineError, match="refusing --dla for yolov3-tiny.onnx: it is an fp32 variant") as info:
        build.build(repo / "yolov3-tiny.onnx", dla_core=0, say=lambda line: None)
    assert "build the fp16 or int8 variant" in str(info.value)
    assert not (repo / "plans").exists() or not list((repo / "plans").glob("*.plan"))
    build.build(repo / "yolov3-tiny.onnx", dla_core=0, legacy_fp16=True, say=lambda line: None)   # FP16 flag
    with pytest.raises(EngineError, match="--dla -1: DLA cores are numbered from 0"):
        build.build(repo / "yolov3-tiny.int8.qdq.onnx", dla_core=-1, say=lambda line: None)


@pytest.mark.parametrize("cores,core", [(0, 0), (2, 2)])
def test_dla_is_refused_where_the_device_has_no_such_core(trt, repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                         cores: int, core: int) -> None:
    monkeypatch.setattr(trt, "DLA_CORES", cores)                  # 0: Orin Nano, Thor, or TensorRT 11.0-11.4.0
    with pytest.raises(EngineError, match=f"--dla {core}: this device has {cores} DLA cores") as info:
        build.build(repo / "yolov3-tiny.int8.qdq.onnx", dla_core=core, say=lambda line: None)
    assert "DLA exists on Jetson AGX Orin and Orin NX only" in str(info.value)


# Item 3: each execution context of a dynamic-shape plan in concurrent use has its own optimization profile.

def test_each_slot_of_a_dynamic_plan_has_its_own_optimization_profile(trt, tmp_path: Path) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], profiles=2, say=lambda line: None)
    assert json.loads(result.sidecar.read_text())["profiles"] == 2
    with TensorRTEngine(result.plan) as engine:
        first, second = engine.create_slot("cam0"), engine.create_slot("cam1")
        assert [first.execution.active_optimization_profile, second.execution.active_optimization_profile] == [0, 1]
        with pytest.raises(EngineError, match="slot 'cam2' needs an optimization profile of its own, and all 2") \
                as info:
            engine.create_slot("cam2")
        assert "slots: cam0, cam1" in str(info.value)
        first.close()
        assert engine.create_slot("cam2").execution.active_optimization_profile == 0
    single = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)
    with TensorRTEngine(single.plan) as engine:
        engine.create_slot("cam0")
        with pytest.raises(EngineError, match="all 1 of this dynamic-shape plan are in use"):
            engine.create_slot("cam1")
        shared = engine.engine.create_execution_context()              # what TensorRT forbids, and the stand-in
        assert not shared.set_input_shape("images", (2, 3, 8, 8))       # refuses
    static = build.build(conv_model(tmp_path / "static.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                         say=lambda line: None)
    with TensorRTEngine(static.plan) as engine:                        # static shapes: slots share profile 0
        assert {engine.create_slot(f"cam{i}").profile for i in range(3)} == {None}


def test_profiles_need_dynamic_shapes(trt, repo: Path) -> None:
    with pytest.raises(EngineError, match="profiles=2: give 1, or more than 1 together with --shapes"):
        build.build(repo / "yolov3-tiny.onnx", profiles=2, say=lambda line: None)


# Item 5: create_execution_context() returning None is an EngineError with TensorRT's messages.

def test_no_execution_context_is_an_engine_error(trt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], profiles=2, say=lambda line: None)
    monkeypatch.setattr(trt, "DEVICE_MEMORY", 0)                    # output shapes need a context at load
    with pytest.raises(EngineError, match="could not create an execution context") as info:
        TensorRTEngine(result.plan).activate()
    assert "could not be allocated" in str(info.value) and "fewer cameras" in str(info.value)
    monkeypatch.setattr(trt, "DEVICE_MEMORY", trt.CONTEXT_MEMORY)  # room for one context
    with TensorRTEngine(result.plan) as engine:
        engine.create_slot("cam0")
        with pytest.raises(EngineError, match="could not create an execution context") as info:
            engine.create_slot("cam1")
        assert "could not be allocated" in str(info.value)
        monkeypatch.setattr(trt, "DEVICE_MEMORY", 2 * trt.CONTEXT_MEMORY)
        assert engine.create_slot("cam1").profile == 1              # the failed slot gave its profile back


def test_a_slot_that_fails_gives_back_its_profile_and_execution_context(trt, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)

    def no_memory(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("cuMemAlloc failed: out of memory")
    with TensorRTEngine(result.plan) as engine:
        with monkeypatch.context() as patch:
            patch.setattr("edge.gpu.cuda.Event", no_memory)
            with pytest.raises(MemoryError) as failed:
                engine.create_slot("cam0")
        assert engine.create_slot("cam0").execution.active_optimization_profile == 0
        del failed


# Item 6: the CUDA context is released once per owner, from any thread, leaving no stack entry behind.

def test_the_pycuda_stand_in_leaks_like_pycuda(pycuda_stand_in: _Driver) -> None:
    """What the device probe measured (pycuda 2026.1, H200): push, pop, then pycuda's detach leaves one entry."""
    fake = cuda.driver()
    context = fake.Device(0).retain_primary_context()
    context.push()
    fake.Context.pop()
    context.detach()
    assert pycuda_stand_in.stack() == ["primary"] and pycuda_stand_in.retains == 0


def test_detach_releases_the_context_and_leaves_no_stack_entry(pycuda_stand_in: _Driver) -> None:
    context = cuda.Context(0)
    with context.current():
        assert pycuda_stand_in.stack() == ["primary"]
    context.detach()
    context.detach()                                                # once per owner
    assert pycuda_stand_in.retains == 0 and pycuda_stand_in.stack() == []


def test_detach_from_another_thread_releases_the_context(pycuda_stand_in: _Driver) -> None:
    context = cuda.Context(0)
    with context.current():
        pass
    left: list[list[str]] = []

    def stop() -> None:
        context.detach()
        left.append(list(pycuda_stand_in.stack()))
    thread = threading.Thread(target=stop)
    thread.start()
    thread.join(10)
    assert pycuda_stand_in.retains == 0 and left == [[]] and pycuda_stand_in.stack() == []


def test_detach_inside_current_is_refused(pycuda_stand_in: _Driver) -> None:
    context = cuda.Context(0)
    with context.current(), pytest.raises(UsageError, match="detach.. while a CUDA context is current"):
        context.detach()
    context.detach()
    assert pycuda_stand_in.retains == 0 and pycuda_stand_in.stack() == []


def test_a_failing_driver_pop_is_an_engine_error(pycuda_stand_in: _Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pycuda_stand_in, "cuCtxPopCurrent_v2", lambda popped: 201)
    with pytest.raises(EngineError, match=r"cuCtxPopCurrent failed .* \(CUresult 201\)"):
        cuda.Context(0).detach()


def test_failed_builds_and_loads_release_the_context(trt, repo: Path, pycuda_stand_in: _Driver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    assert pycuda_stand_in.retains == 0
    monkeypatch.setattr(trt.Builder, "build_serialized_network", lambda self, network, config: None)
    with pytest.raises(EngineError, match="TensorRT failed to build"):
        build.build(repo / "yolov3-tiny.onnx", say=lambda line: None)
    assert pycuda_stand_in.retains == 0 and pycuda_stand_in.stack() == []
    result.plan.write_bytes(b"not a plan")
    with pytest.raises(EngineError, match="could not deserialize"):
        TensorRTEngine(result.plan).activate()
    assert pycuda_stand_in.retains == 0 and pycuda_stand_in.stack() == []


_REAL_DETACH = textwrap.dedent("""
    import ctypes, json, threading
    from edge.gpu import cuda
    lib = ctypes.CDLL("libcuda.so.1")

    def state():
        current, flags, active = ctypes.c_void_p(), ctypes.c_uint(), ctypes.c_int()
        lib.cuCtxGetCurrent(ctypes.byref(current))
        lib.cuDevicePrimaryCtxGetState(0, ctypes.byref(flags), ctypes.byref(active))
        return {"current": bool(current.value), "active": bool(active.value)}

    seen = {}
    context = cuda.Context(0)
    with context.current():
        seen["inside"] = state()
    context.detach()
    seen["after"] = state()
    context = cuda.Context(0)
    with context.current():
        pass
    thread = threading.Thread(target=lambda: (context.detach(), seen.update(thread=state())))
    thread.start()
    thread.join()
    seen["after thread"] = state()
    print(json.dumps(seen))
""")


@pytest.mark.gpu
def test_detach_on_a_real_gpu() -> None:
    """The same, against pycuda and the driver (a fresh process: nothing else holds the primary context)."""
    run = subprocess.run([sys.executable, "-c", _REAL_DETACH], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["inside"] == {"current": True, "active": True}
    assert seen["after"] == seen["thread"] == seen["after thread"] == {"current": False, "active": False}


# Issue 9, items 1 to 3 in the slot: one InFlightFrame per frame in flight, three streams ordered by events,
# copy modes, raw frames letterboxed on the slot. Against the CUDA stand-in (tests/support/fake_cuda.py), whose ledger
# sees every allocation and free, and what is enqueued on which stream.

def _plan(tmp_path: Path, name: str = "m") -> Path:
    onnx_path = conv_model(tmp_path / f"{name}.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1,
                           n_outputs=2)
    return build.build(onnx_path, say=lambda line: None).plan


def _held_per_slot(depth: int, mode: str, frames: bool, graphs: bool = False) -> dict[str, int]:
    """What a slot holds: three streams (in CUDA graph mode instead one per frame); per frame 3 events, a host input
    and 2 host outputs (mapped in zerocopy mode), device buffers for the input and outputs in copy mode (the input
    alone for GPU preprocessing in zerocopy mode), and for GPU preprocessing a GpuLetterbox (a kernel and an
    event)."""
    device = 3 if mode == "copy" else int(frames)
    held = {"stream": depth if graphs else 3, "event": depth * (3 + frames),
            "mapped host buffer" if mode == "zerocopy" else "host buffer": depth * 3,
            "device buffer": depth * device, "kernel": depth * frames}
    return {kind: count for kind, count in held.items() if count}


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
@pytest.mark.parametrize("frames", [True, False])
def test_a_slot_holds_one_in_flight_frame_per_buffer_and_frees_everything(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, mode: str, frames: bool) -> None:
    plan = _plan(tmp_path)
    engine = TensorRTEngine(plan, copy_mode=mode, preprocessing=LETTERBOX if frames else None).activate()
    assert cuda_stand_in.kinds() == {"context": 1} and engine.copy_mode == mode and engine.takes_frames == frames
    slot = engine.create_slot("cam", depth=3)
    assert cuda_stand_in.kinds() == {"context": 1, **_held_per_slot(3, mode, frames)}
    assert len(slot.frames) == 3 and len({id(f.host_input) for f in slot.frames}) == 3
    for value in (1.0, 2.0, 3.0, 4.0):
        buf = slot.input()
        buf[...] = value
        assert (slot.submit(buf).wait(0)["out1"] == value).all()      # the stand-in copies input to outputs
    if frames:
        slot.submit_frame(np.zeros((6, 10, 3), np.uint8))[0].wait(0)   # stages the frame (one more buffer)
    slot.close()
    assert cuda_stand_in.kinds() == {"context": 1} and not engine.engine.contexts
    engine.deactivate()
    assert cuda_stand_in.live == {}


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
@pytest.mark.parametrize("graphs", [False, True])
def test_a_slot_that_fails_at_any_allocation_frees_what_it_took(trt, cuda_stand_in: fake_cuda.Ledger,
                                                              tmp_path: Path, mode: str, graphs: bool) -> None:
    """cuMemAlloc (or an event, a stream, a kernel) failing at each allocation in turn: each time the slot
    frees everything it took, gives back its execution contexts (CUDA graph mode: one per frame), and the next
    slot is whole."""
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, copy_mode=mode, cuda_graph=graphs) as engine:
        before = dict(cuda_stand_in.live)
        start = cuda_stand_in.allocations
        engine.create_slot("cam", depth=2).close()
        needed = cuda_stand_in.allocations - start
        assert needed == sum(_held_per_slot(2, mode, True, graphs).values())
        for failing in range(1, needed + 1):
            cuda_stand_in.fail_at = cuda_stand_in.allocations + failing
            with pytest.raises(MemoryError, match="out of memory"):
                engine.create_slot("cam", depth=2)
            assert cuda_stand_in.live == before, f"allocation {failing} of {needed} failed"
            assert not engine.engine.contexts and engine._slots == []
        cuda_stand_in.fail_at = None
        assert engine.create_slot("cam", depth=2).in_flight() == 0
    assert cuda_stand_in.live == {}


def test_a_failed_activate_releases_what_it_took(trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    cuda_stand_in.can_map = False
    with pytest.raises(EngineError, match="zerocopy, and this GPU cannot map host memory") as info:
        TensorRTEngine(plan, copy_mode="zerocopy").activate()
    assert "set copy_mode: copy" in str(info.value)
    plan.write_bytes(b"not a plan")
    with pytest.raises(EngineError, match="could not deserialize"):
        TensorRTEngine(plan).activate()
    bf16 = build.build(_io_model(tmp_path / "bf16.onnx", TensorProto.FLOAT, TensorProto.BFLOAT16),
                       say=lambda line: None)
    with pytest.raises(EngineError, match="numpy has no type"):
        TensorRTEngine(bf16.plan).activate()
    assert cuda_stand_in.live == {}                                 # the context detached each time


def test_a_frame_is_reused_only_after_its_events_complete(trt, cuda_stand_in: fake_cuda.Ledger,
                                                          tmp_path: Path) -> None:
    with TensorRTEngine(_plan(tmp_path), copy_mode="copy") as engine:
        slot = engine.create_slot("cam", depth=2)
        cuda_stand_in.hold = True                                   # the GPU has not run what was enqueued
        pendings = []
        for value in (1.0, 2.0):
            buf = slot.input()
            buf[...] = value
            pendings.append(slot.submit(buf))
        with pytest.raises(WaitTimeout, match="did not finish within 0.01 s"):
            pendings[0].wait(0.01)
        assert slot.in_flight() == 2                                # a timed-out frame keeps its buffers
        with pytest.raises(UsageError, match="all 2 input buffers are in flight"):
            slot.input()
        cuda_stand_in.finish()
        assert (pendings[0].wait(0.01)["out0"] == 1.0).all()
        assert slot.in_flight() == 1 and slot.input() is slot.frames[0].host_input.array
        assert (pendings[1].wait(0.01)["out0"] == 2.0).all()


def test_a_failed_submission_waits_for_its_work_before_giving_back_its_frame(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TensorRTEngine(_plan(tmp_path), copy_mode="copy") as engine:
        slot = engine.create_slot("cam", depth=1)
        cuda_stand_in.hold = True
        monkeypatch.setattr(trt.IExecutionContext, "execute_async_v3", lambda self, stream_handle: False)
        mark = len(cuda_stand_in.trace)
        with pytest.raises(EngineError, match="execute_async_v3 failed on slot cam"):
            slot.submit(slot.input())
        kinds = [entry[0] for entry in cuda_stand_in.trace[mark:]]
        assert kinds[:2] == ["h2d", "record"] and kinds[-3:] == ["synchronize"] * 3
        assert slot.frames[0].uploaded.complete and slot.in_flight() == 0


_STAGE_EVENTS = ("uploaded", "computed", "done")


def _readable(slot: TrtSlot, trace: list[tuple[Any, ...]]) -> list[tuple[str, ...]]:
    """The trace with stream and event names (an event of no InFlightFrame is the GpuLetterbox's own)."""
    streams = {slot.upload.handle: "upload", slot.compute.handle: "compute", slot.download.handle: "download"}
    events = {id(getattr(f, n)): n for f in slot.frames for n in _STAGE_EVENTS}
    readable = []
    for kind, stream, *rest in trace:
        named = (events.get(id(rest[0]), "letterbox"),) if kind in ("record", "wait") else ()
        readable.append((kind, streams[stream], *named))
    return readable


ORDER = {  # what one frame enqueues, per copy mode and input path
    ("copy", "tensor"): [("h2d", "upload"), ("record", "upload", "uploaded"), ("wait", "compute", "uploaded"),
                         ("compute", "compute"), ("compute", "compute"), ("record", "compute", "computed"),
                         ("wait", "download", "computed"), ("d2h", "download"), ("d2h", "download"),
                         ("record", "download", "done")],
    ("zerocopy", "tensor"): [("compute", "compute"), ("compute", "compute"), ("record", "compute", "done")],
    ("copy", "frame"): [("h2d", "upload"), ("kernel", "upload"), ("record", "upload", "letterbox"),
                        ("record", "upload", "uploaded"), ("wait", "compute", "uploaded"), ("compute", "compute"),
                        ("compute", "compute"), ("record", "compute", "computed"), ("wait", "download", "computed"),
                        ("d2h", "download"), ("d2h", "download"), ("record", "download", "done")],
    ("zerocopy", "frame"): [("kernel", "upload"), ("record", "upload", "letterbox"), ("record", "upload", "uploaded"),
                            ("wait", "compute", "uploaded"), ("compute", "compute"), ("compute", "compute"),
                            ("record", "compute", "done")],
}


@pytest.mark.parametrize("mode,path", list(ORDER))
def test_each_stage_runs_on_its_stream_after_the_event_it_needs(trt, cuda_stand_in: fake_cuda.Ledger,
                                                               tmp_path: Path, mode: str, path: str) -> None:
    """Upload (or the letterbox kernel) on the upload stream, the engine on the compute stream after the frame's
    `uploaded` event, the downloads on the download stream after its `computed` event; each frame its own
    buffers and events; zerocopy hands the engine mapped host memory and copies nothing."""
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, copy_mode=mode) as engine:
        slot = engine.create_slot("cam", depth=2)
        for index in range(2):
            mark = len(cuda_stand_in.trace)
            if path == "tensor":
                slot.submit(slot.input())
            else:
                slot.submit_frame(np.zeros((6, 10, 3), np.uint8))
            trace = cuda_stand_in.trace[mark:]
            assert _readable(slot, trace) == ORDER[mode, path]
            frame = slot.frames[index]
            stage_events = {id(getattr(f, n)) for f in slot.frames for n in _STAGE_EVENTS}
            assert all(entry[2] in [getattr(frame, n) for n in _STAGE_EVENTS] for entry in trace
                       if entry[0] in ("wait", "record") and id(entry[2]) in stage_events)     # this frame's own
            used = frame.addresses if path == "tensor" else frame.frame_addresses
            assert slot.execution.addresses == used
            if mode == "zerocopy":
                assert used["out0"] == frame.host_outputs["out0"].array.ctypes.data      # mapped: UVA pointer
            if path == "tensor":
                assert used["images"] == (frame.host_input.array.ctypes.data if mode == "zerocopy"
                                          else frame.device_input.pointer)
            else:
                assert used["images"] == frame.device_input.pointer == trace[1 if mode == "copy" else 0][2]


@pytest.mark.parametrize("integrated,can_map,requested,chosen", [
    (False, True, "auto", "copy"), (True, True, "auto", "zerocopy"), (True, False, "auto", "copy"),
    (False, True, "zerocopy", "zerocopy"), (True, True, "copy", "copy")])
def test_the_copy_mode_follows_the_devices_integrated_attribute(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        integrated: bool, can_map: bool, requested: str, chosen: str) -> None:
    cuda_stand_in.integrated, cuda_stand_in.can_map = integrated, can_map
    with caplog.at_level("INFO", logger="edge.engine"), TensorRTEngine(_plan(tmp_path), copy_mode=requested) as engine:
        assert engine.copy_mode == chosen
        slot = engine.create_slot("cam")
        assert all(h.mapped == (chosen == "zerocopy") for f in slot.frames
                   for h in [f.host_input, *f.host_outputs.values()])
    why = {("auto", "copy"): "a discrete GPU" if not integrated else "an integrated GPU that cannot map host memory",
           ("auto", "zerocopy"): "an integrated GPU shares the host's memory"}.get((requested, chosen), requested)
    assert f"copy mode {chosen} (" in caplog.text and why in caplog.text


def test_copy_mode_is_a_task_setting(trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edge.config.schema import TaskConfig
    from edge.engines import factory

    onnx_path = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1)
    variant = repository.Variant("fp32", "onnx", "m.onnx", repository.sha256_file(onnx_path))
    repository.Manifest(tmp_path, "m", [variant]).save()
    task = TaskConfig(name="t", type="detector", engines=str(tmp_path), cameras=["c"], copy_mode="zerocopy")
    [engine] = factory.variants_for(task, threads=1, preprocessing=None).engines.values()
    assert isinstance(engine, TensorRTEngine) and engine.requested_copy_mode == "zerocopy"
    assert TaskConfig(name="t", type="detector", model=str(onnx_path), cameras=["c"]).copy_mode == "auto"
    with pytest.raises(ValidationError, match="copy_mode"):
        TaskConfig(name="t", type="detector", model=str(onnx_path), cameras=["c"], copy_mode="fast")
    with pytest.raises(UsageError, match="copy_mode 'fast' is not one of auto, copy, zerocopy"):
        TensorRTEngine(onnx_path, copy_mode="fast")


def test_slots_take_raw_frames_where_the_input_is_one_float_image(trt, cuda_stand_in: fake_cuda.Ledger,
                                                                 tmp_path: Path) -> None:
    half = build.build(_io_model(tmp_path / "half.onnx", TensorProto.FLOAT16, TensorProto.FLOAT16),
                       say=lambda line: None)
    byte = build.build(_io_model(tmp_path / "byte.onnx", TensorProto.UINT8, TensorProto.FLOAT), say=lambda line: None)
    dynamic = build.build(make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3,
                                                  stride=1), {"images": 0, "out0": 0}),
                          shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)
    cases = [(half.plan, True, True), (_plan(tmp_path), False, False), (byte.plan, True, False),
             (dynamic.plan, True, False)]
    for plan, wanted, takes in cases:
        with TensorRTEngine(plan, preprocessing=LETTERBOX if wanted else None) as engine:
            slot = engine.create_slot("cam")
            assert engine.takes_frames == slot.takes_frames == takes, plan.name
            if not takes:
                with pytest.raises(UsageError, match="does not take raw frames") as info:
                    slot.submit_frame(np.zeros((4, 4, 3), np.uint8))
                assert "preprocess into slot.input() and submit()" in str(info.value) and slot.in_flight() == 0


def test_submit_frame_returns_the_letterbox_and_refuses_bad_frames(trt, cuda_stand_in: fake_cuda.Ledger,
                                                                   tmp_path: Path) -> None:
    from edge.letterbox import FrameError, Letterbox

    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cam", depth=1)
        pending, box = slot.submit_frame(np.zeros((6, 10, 3), np.uint8))
        assert box == Letterbox.fit(10, 6, 8, 8)
        pending.wait(0)
        mark = len(cuda_stand_in.trace)
        with pytest.raises(FrameError, match="BGR uint8"):
            slot.submit_frame(np.zeros((6, 10), np.uint8))
        assert slot.in_flight() == 0 and cuda_stand_in.trace[mark:] == []    # nothing enqueued, frame free


def test_results_are_copies_unless_asked_for_the_slots_own_buffers(trt, cuda_stand_in: fake_cuda.Ledger,
                                                                   tmp_path: Path) -> None:
    with TensorRTEngine(_plan(tmp_path)) as engine:
        slot = engine.create_slot("cam", depth=2)
        copied = slot.submit(slot.input()).wait(0)
        own = slot.submit(slot.input()).wait(0, copy=False)
        assert not np.shares_memory(copied["out0"], slot.frames[0].host_outputs["out0"].array)
        assert own["out0"] is slot.frames[1].host_outputs["out0"].array


# --- CUDA graph mode (cuda_graph: true) ---------------------------------------------------------------------

def _record_streams(slot: TrtSlot) -> list[int]:
    return [frame.graph.stream.handle for frame in slot.frames]


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
def test_in_graph_mode_a_frame_is_one_graph_launch_on_its_records_own_stream(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, mode: str) -> None:
    """The first submission on each frame record runs its work on the record's stream as it is, then captures
    it; every later one is one graph launch and the record's done event, and still computes the right result."""
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, copy_mode=mode, cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=2)
        assert slot.graphs and slot.streams == [] and slot.execution is None
        assert cuda_stand_in.kinds() == {"context": 1, **_held_per_slot(2, mode, True, graphs=True)}
        assert len(engine.engine.contexts) == 2               # an execution context per frame record
        streams = _record_streams(slot)
        for value in range(1, 7):
            buf = slot.input()
            buf[...] = value
            mark = len(cuda_stand_in.trace)
            result = slot.submit(buf).wait(0)
            assert (result["out0"] == value).all() and (result["out1"] == value).all()
            trace = cuda_stand_in.trace[mark:]
            stream = streams[(value - 1) % 2]
            assert {entry[1] for entry in trace} == {stream}
            if value > 2:
                assert [entry[0] for entry in trace] == ["graph", "record"]
            else:
                assert ("compute", stream) in trace and "graph" not in [entry[0] for entry in trace]
        assert cuda_stand_in.captures == 2 and cuda_stand_in.kinds()["graph"] == 2
        slot.close()
        assert cuda_stand_in.kinds() == {"context": 1} and not engine.engine.contexts
    assert cuda_stand_in.live == {}


def test_cuda_graphs_need_only_the_driver_api_of_cuda_bindings(cuda_stand_in: fake_cuda.Ledger) -> None:
    """Issue 16, item 8: PyPI's aarch64 cuda-bindings 12.9+ link an SBSA build of cudart into cuda.bindings.runtime,
    which L4T cannot use, while cuda.bindings.driver opens only libcuda.so.1. edge.gpu.cuda.Graph captures, launches and
    frees through the driver API alone (the stand-in has no cuda.bindings.runtime), in thread-local mode as trtexec
    does, destroys the captured graph once it is instantiated, and its launches read the host buffer as it is then."""
    context = cuda.Context(0)
    with context.current():
        stream, device = cuda.Stream(), cuda.DeviceBuffer(16)
        host, back = cuda.HostBuffer((4,), np.float32), cuda.HostBuffer((4,), np.float32)

        def work() -> None:
            device.upload(host.array, stream)
            device.download(back.array, stream)
        host.array[:] = 1.0
        graph = cuda.Graph.capture(stream, work)
        assert (back.array == 0).all()                                     # captured, not run
        assert cuda_stand_in.capture_modes == [fake_cuda.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL]
        assert cuda_stand_in.kinds()["graph"] == 1 and "captured graph" not in cuda_stand_in.kinds()
        for value in (2.0, 3.0):
            host.array[:] = value
            graph.launch(stream)
            assert (back.array == value).all()
        graph.free()
        graph.free()
        assert "graph" not in cuda_stand_in.kinds()
        for item in (device, host, back, stream):
            item.free()
    context.detach()
    assert cuda_stand_in.live == {}


def test_no_module_of_edge_imports_the_cuda_runtime_bindings() -> None:
    """What edge does with CUDA needs libcuda.so.1 alone on the board (pycuda, and cuda-bindings' driver API for
    graphs): no module imports cuda.bindings.runtime (or its old name cuda.cudart)."""
    import ast

    import edge

    root = Path(edge.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [f"{path.relative_to(root)}: {name}" for name in names
                      if name.startswith(("cuda.bindings.runtime", "cuda.bindings.cyruntime", "cuda.cudart"))]
    assert found == []


def test_a_capture_cuda_refuses_ends_and_leaves_nothing_behind(cuda_stand_in: fake_cuda.Ledger) -> None:
    """Work that invalidates the capture (cuStreamEndCapture: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph), a
    capture begun on a stream that already captures (CUDA_ERROR_ILLEGAL_STATE) and an exception from the callable
    each end the capture with nothing held; the first two are an EngineError naming the CUresult, the last
    propagates; the stream captures again afterwards."""
    context = cuda.Context(0)
    with context.current():
        stream = cuda.Stream()
        held = dict(cuda_stand_in.live)
        cuda_stand_in.fail_capture = True
        with pytest.raises(EngineError, match="capture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED") as info:
            cuda.Graph.capture(stream, lambda: None)
        assert info.value.hint == cuda.GRAPH_HINT and cuda_stand_in.live == held
        cuda_stand_in.fail_capture = False
        with pytest.raises(EngineError, match="refused to start a graph capture: CUDA_ERROR_ILLEGAL_STATE"):
            cuda.Graph.capture(stream, lambda: cuda.Graph.capture(stream, lambda: None))
        assert cuda_stand_in.live == held

        def failing() -> None:
            raise ValueError("enqueue failed")
        with pytest.raises(ValueError, match="enqueue failed"):
            cuda.Graph.capture(stream, failing)
        assert cuda_stand_in.live == held
        cuda.Graph.capture(stream, lambda: None).free()
        assert cuda_stand_in.live == held and cuda_stand_in.captures == 1
        stream.free()
    context.detach()


def test_in_graph_mode_a_new_frame_size_is_captured_again(trt, cuda_stand_in: fake_cuda.Ledger,
                                                          tmp_path: Path) -> None:
    from edge.letterbox import Letterbox

    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=1)
        for height, width, captures, repeat in ((6, 10, 1, False), (6, 10, 1, True), (8, 4, 2, False),
                                                (8, 4, 2, True), (6, 10, 3, False)):
            mark = len(cuda_stand_in.trace)
            pending, box = slot.submit_frame(np.zeros((height, width, 3), np.uint8))
            pending.wait(0)
            assert box == Letterbox.fit(width, height, 8, 8)
            assert cuda_stand_in.captures == captures and cuda_stand_in.kinds()["graph"] == 1
            kinds = [entry[0] for entry in cuda_stand_in.trace[mark:]]
            assert kinds == ["graph", "record"] if repeat else "graph" not in kinds
        assert slot.frames[0].graph.key[1] == (6, 10, 3)


def test_a_capture_that_fails_leaves_the_slot_running_without_graphs(trt, cuda_stand_in: fake_cuda.Ledger,
                                                                     tmp_path: Path, caplog) -> None:
    cuda_stand_in.fail_capture = True
    with TensorRTEngine(_plan(tmp_path), cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=2)
        for value in range(1, 6):
            buf = slot.input()
            buf[...] = value
            assert (slot.submit(buf).wait(0)["out0"] == value).all()
        assert "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED" in slot.graph_problem
        assert cuda_stand_in.captures == 0 and "graph" not in cuda_stand_in.kinds()
        assert "graph" not in [entry[0] for entry in cuda_stand_in.trace]
        warnings = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
        assert len(warnings) == 1 and "running without graphs" in warnings[0].getMessage()   # once, not per frame


def test_graphs_stay_off_where_shapes_change(trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, caplog) -> None:
    """A graph bakes in its shapes: a dynamic-shape plan's slots and batched slots run as before, and say why."""
    caplog.set_level(logging.INFO, logger="edge")          # the level of `edge` itself, whatever set it before
    dynamic = build.build(make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3,
                                                  stride=1), {"images": 0, "out0": 0}),
                          shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], profiles=2, say=lambda line: None)
    with TensorRTEngine(dynamic.plan, cuda_graph=True) as engine:
        plain, batched = engine.create_slot("one"), engine.create_slot("two", batch=2)
        assert not plain.graphs and not batched.graphs and len(plain.streams) == 3
        assert (plain.submit(plain.input()).wait(0)["out0"] == 0).all()
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "slot one | CUDA graphs off: a dynamic-shape plan" in messages
    assert "slot two | CUDA graphs off: a batched slot" in messages
    with TensorRTEngine(_plan(tmp_path), cuda_graph=False) as engine:
        assert not engine.create_slot("cam").graphs


@pytest.mark.parametrize("graphs", [False, True])
def test_a_camera_can_decode_into_the_next_frame_records_pinned_buffer(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, graphs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[np.ndarray] = []
    original = np.copyto
    monkeypatch.setattr(np, "copyto", lambda dst, src, **kw: copies.append(dst) or original(dst, src, **kw))
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, cuda_graph=graphs) as engine:
        slot = engine.create_slot("cam", depth=2)
        seen = []
        for _ in range(4):
            buffer = slot.frame_buffer(10, 6)
            buffer[:] = 7
            seen.append(buffer.ctypes.data)
            slot.submit_frame(buffer)[0].wait(0)
            assert buffer.shape == (6, 10, 3) and buffer.dtype == np.uint8
        assert seen[0] == seen[2] != seen[1] == seen[3]         # the pinned buffer of each frame record in turn
        assert copies == []                                     # decoded in place: nothing copied on the host
        slot.submit_frame(np.full((6, 10, 3), 7, np.uint8))[0].wait(0)
        assert len(copies) == 1                                 # a frame from elsewhere is copied in
        slot.submit(slot.input())
        slot.submit(slot.input())
        with pytest.raises(UsageError, match="all 2 input buffers are in flight"):
            slot.frame_buffer(10, 6)
    with TensorRTEngine(_plan(tmp_path)) as engine:
        with pytest.raises(UsageError, match="has no frame buffers"):
            engine.create_slot("cam").frame_buffer(10, 6)


def test_cuda_graph_is_a_task_setting(trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edge.config.schema import TaskConfig
    from edge.engines import factory

    onnx_path = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1)
    variant = repository.Variant("fp32", "onnx", "m.onnx", repository.sha256_file(onnx_path))
    repository.Manifest(tmp_path, "m", [variant]).save()
    task = TaskConfig(name="t", type="detector", engines=str(tmp_path), cameras=["c"], cuda_graph=True)
    [engine] = factory.variants_for(task, threads=1, preprocessing=None).engines.values()
    assert isinstance(engine, TensorRTEngine) and engine.cuda_graph is True
    assert TaskConfig(name="t", type="detector", model=str(onnx_path), cameras=["c"]).cuda_graph == "auto"
    for given, value in (("auto", "auto"), (False, False), ("off", False), ("on", True)):   # YAML's on/off too
        assert TaskConfig(name="t", type="detector", model=str(onnx_path), cameras=["c"],
                          cuda_graph=given).cuda_graph == value
    with pytest.raises(ValidationError, match="cuda_graph"):
        TaskConfig(name="t", type="detector", model=str(onnx_path), cameras=["c"], cuda_graph="sometimes")
    with pytest.raises(UsageError, match="cuda_graph 'sometimes' is not one of true, false, auto"):
        TensorRTEngine(tmp_path / "m.plan", cuda_graph="sometimes")


def test_cuda_graph_auto_runs_graphs_where_the_slot_can_and_says_which(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: graphs on an unbatched slot of a static-shape plan; off, and why, where the slot cannot or
    cuda-bindings does not import (logged at info: nothing was asked for in vain), while `true` there tries
    and fails at the capture (a warning); `graph_status` says which frames run as graphs."""
    caplog.set_level(logging.INFO, logger="edge")
    plan = _plan(tmp_path)
    with TensorRTEngine(plan, cuda_graph="auto") as engine:
        slot = engine.create_slot("cam")
        assert slot.graphs and slot.graph_status == "on"
        assert (slot.submit(slot.input()).wait(0)["out0"] == 0).all() and cuda_stand_in.captures == 1
        assert engine.create_slot("cams", batch=1).graph_status.startswith("off: a batched slot's input shape")
    with TensorRTEngine(plan, cuda_graph=False) as engine:
        assert engine.create_slot("cam").graph_status == "off: cuda_graph: false"
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)                 # cuda-bindings not installed
    caplog.clear()
    with TensorRTEngine(plan, cuda_graph="auto") as engine:
        slot = engine.create_slot("cam")
        assert not slot.graphs and len(slot.streams) == 3
        assert slot.graph_status.startswith("off: CUDA graphs need cuda-bindings")
    [line] = [r for r in caplog.records if "CUDA graphs off" in r.getMessage()]
    assert line.levelno == logging.INFO
    caplog.clear()
    with TensorRTEngine(plan, cuda_graph=True) as engine:
        slot = engine.create_slot("cam")
        assert slot.graph_status == "on"
        assert (slot.submit(slot.input()).wait(0)["out0"] == 0).all()        # ran, then the capture failed
        assert slot.graph_status.startswith("failed: CUDA graphs need cuda-bindings")
    assert [r.levelno for r in caplog.records if "capture failed" in r.getMessage()] == [logging.WARNING]
    assert cuda_stand_in.live == {}


# --- preprocessing: what the task names, each frame checked once ----------------------------------------------

@pytest.fixture
def frame_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of every frame edge.letterbox.check_frame looks at, in whichever edge module calls it."""
    from edge import letterbox

    original, seen = letterbox.check_frame, []

    def counted(image: np.ndarray) -> None:
        seen.append(image.shape)
        original(image)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("edge") and getattr(module, "check_frame", None) is original:
            monkeypatch.setattr(module, "check_frame", counted)
    return seen


@pytest.mark.parametrize("graphs", [False, True])
def test_a_raw_frame_is_checked_once(trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, graphs: bool,
                                     frame_checks: list[tuple[int, ...]]) -> None:
    """check_frame ran twice per frame on the TensorRT path (the slot, then its GpuLetterbox): once now, a bad
    frame still enqueuing nothing."""
    from edge.letterbox import FrameError

    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, cuda_graph=graphs) as engine:
        slot = engine.create_slot("cam", depth=1)
        for _ in range(2):
            slot.submit_frame(np.zeros((6, 10, 3), np.uint8))[0].wait(0)
        assert frame_checks == [(6, 10, 3)] * 2
        mark = len(cuda_stand_in.trace)
        with pytest.raises(FrameError, match="BGR uint8"):
            slot.submit_frame(np.zeros((6, 10), np.uint8))
        assert slot.in_flight() == 0 and cuda_stand_in.trace[mark:] == []


def test_a_batch_of_raw_frames_is_checked_once_and_a_bad_one_enqueues_nothing(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path, frame_checks: list[tuple[int, ...]]) -> None:
    from edge.letterbox import FrameError

    dynamic = build.build(make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3,
                                                  stride=1), {"images": 0, "out0": 0}),
                          shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)
    with TensorRTEngine(dynamic.plan, preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cams", depth=1, batch=2)
        slot.submit_frames([np.zeros((6, 10, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)])[0].wait(0)
        assert frame_checks == [(6, 10, 3), (4, 4, 3)]
        mark = len(cuda_stand_in.trace)
        with pytest.raises(FrameError, match="BGR uint8"):
            slot.submit_frames([np.zeros((6, 10, 3), np.uint8), np.zeros((6, 10), np.uint8)])
        assert slot.in_flight() == 0 and cuda_stand_in.trace[mark:] == []


def test_slots_take_raw_frames_only_for_a_preprocessing_the_task_names(trt, cuda_stand_in: fake_cuda.Ledger,
                                                                      tmp_path: Path) -> None:
    """Any engine whose input fitted took raw frames and letterboxed them, whatever the task's preprocessing: an
    engine now letterboxes only when given the task's LetterboxPreprocessing, with its fill."""
    plan = _plan(tmp_path)
    with TensorRTEngine(plan) as engine:
        slot = engine.create_slot("cam")
        assert not engine.takes_frames and not slot.takes_frames and "kernel" not in cuda_stand_in.kinds()
    with TensorRTEngine(plan, preprocessing=LetterboxPreprocessing(fill=0.25)) as engine:
        slot = engine.create_slot("cam")
        assert slot.takes_frames and {box.fill for f in slot.frames for box in f.letterboxes} == {0.25}


def test_the_factory_hands_tensorrt_the_tasks_preprocessing_and_an_unknown_kind_is_refused(
        trt, cuda_stand_in: fake_cuda.Ledger, tmp_path: Path) -> None:
    from edge.config.schema import TaskConfig
    from edge.engines import factory
    from edge.tasks import preprocessing_of
    from edge.tasks.detector import YoloDetector

    onnx_path = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1)
    variant = repository.Variant("fp32", "onnx", "m.onnx", repository.sha256_file(onnx_path))
    repository.Manifest(tmp_path, "m", [variant]).save()
    task = TaskConfig(name="t", type="detector", engines=str(tmp_path), cameras=["c"])
    assert preprocessing_of(task) is YoloDetector.preprocessing == LETTERBOX
    [engine] = factory.variants_for(task, threads=1, preprocessing=preprocessing_of(task)).engines.values()
    assert isinstance(engine, TensorRTEngine) and engine.preprocessing is YoloDetector.preprocessing

    class CenterCrop(Preprocessing):
        def __repr__(self) -> str:
            return "CenterCrop()"

    with pytest.raises(EngineError, match="cannot run the preprocessing the task names, CenterCrop()") as info:
        factory.variants_for(task, threads=1, preprocessing=CenterCrop())
    assert "backend: onnxruntime" in str(info.value)
