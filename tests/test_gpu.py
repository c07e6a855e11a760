"""GPU tier (device machine: NVIDIA GPU + pycuda, no TensorRT): edge.cuda for real, and the TensorRT
backend's slots, streams and buffers for real, with tests/fake_tensorrt.py standing in for TensorRT
(its network copies the input into the outputs on the given stream via cuMemcpyDtoDAsync)."""
from __future__ import annotations

import collections
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests import fake_tensorrt
from tests.models import conv_model, make_dynamic

pytestmark = pytest.mark.gpu


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("edge.bundle.read_board", lambda root=Path("/"): fake_tensorrt.BOARD)
    return fake_tensorrt


@pytest.fixture(autouse=True)
def _no_out_of_context_cleanup() -> None:
    """pycuda warns when a CUDA object is collected without its context: everything is freed explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*out-of-thread context could not be cleaned up")
        yield


def test_primary_context_from_several_threads() -> None:
    from edge import cuda

    context = cuda.Context(0)
    errors: list[BaseException] = []

    def work(value: float) -> None:
        try:
            with context.current():
                stream = cuda.Stream()
                host = cuda.HostBuffer((1024,), np.float32)
                back = cuda.HostBuffer((1024,), np.float32)
                device = cuda.DeviceBuffer(host.array.nbytes)
                host.array[:] = value
                device.upload(host.array, stream)
                device.download(back.array, stream)
                stream.synchronize()
                assert (back.array == value).all()
                device.free()
                host.free()
                back.free()
                stream.free()
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the test thread
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    context.detach()


def test_mapped_host_buffer_and_grow_only_device_buffer() -> None:
    from edge import cuda

    context = cuda.Context(0)
    with context.current():
        mapped = cuda.HostBuffer((256,), np.uint8, mapped=True)
        assert mapped.device_pointer() == mapped.array.ctypes.data            # UVA: same address
        buffer = cuda.DeviceBuffer(100)
        first = buffer.pointer
        assert buffer.ensure(50).pointer == first and buffer.ensure(200).nbytes == 200
        buffer.free()
        mapped.free()
    context.detach()


def test_tensorrt_engine_slots_keep_frames_apart(trt, tmp_path: Path) -> None:
    """Two cameras, K=3 frames in flight each: every result belongs to its own frame."""
    from edge.backends.tensorrt import TensorRTEngine
    from edge.tools import build

    onnx = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1)
    result = build.build(onnx, say=lambda line: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # pycuda warns about buffers freed out of context
        engine = TensorRTEngine(result.plan).activate()
        slots = [engine.create_slot(f"cam{i}", depth=3) for i in range(2)]
        queues: list[collections.deque] = [collections.deque() for _ in slots]
        checked = 0
        for frame in range(10):
            for i, (slot, queue) in enumerate(zip(slots, queues)):
                if len(queue) == slot.depth:
                    value, pending = queue.popleft()
                    assert (pending.wait(10)["out0"] == value).all()
                    checked += 1
                buf = slot.input()
                buf[...] = 100 * i + frame
                queue.append((100 * i + frame, slot.submit(buf)))
        for queue in queues:
            for value, pending in queue:
                assert (pending.wait(10)["out0"] == value).all()
                checked += 1
        assert checked == 20
        engine.deactivate()


def test_service_runs_a_plan_from_the_repository(trt, tmp_path: Path) -> None:
    """The whole daemon on the GPU: resolver picks the plan built here, lanes run it on CUDA streams."""
    from edge import bundle
    from edge.config import parse_config
    from edge.service import Service
    from edge.tools import build

    repo = tmp_path / "repo"
    repo.mkdir()
    meta = {"anchors": [[[10, 14], [23, 27], [37, 58]]], "strides": [32], "labels": ["a", "b"]}
    onnx = conv_model(repo / "m.onnx", input_shape=[1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=meta)
    bundle.Manifest(repo, "m", [bundle.Variant("fp32", "onnx", "m.onnx", bundle.sha256_file(onnx))]).save()
    build.build(onnx, say=lambda line: None)
    text = (f"version: 1\ncameras:\n  - id: c0\n    uri: test://bars?size=320x240&realtime=0\n"
            f"  - id: c1\n    uri: test://bars?size=160x120&realtime=0\ntasks:\n  - name: t\n    type: detector\n"
            f"    engines: {repo}\n    allow_onnx: false\n    cameras: [c0, c1]\n"
            f"output:\n  results: ipc://{tmp_path}/r.sock\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=25)
    service.start()
    try:
        assert service.tasks["t"].active().backend == "tensorrt"
        assert service.run(threading.Event()) == 0
        assert [lane.stats.processed for lane in service.lanes] == [25, 25]
    finally:
        service.stop()


def test_selftest_cuda_check() -> None:
    from edge import selftest

    check = selftest._cuda(True)
    assert check.status == selftest.OK and "pinned copy round trip" in check.detail


def test_dynamic_batch_plan_runs_at_its_built_shape(trt, tmp_path: Path) -> None:
    from edge.backends.tensorrt import TensorRTEngine
    from edge.tools import build

    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)
    with TensorRTEngine(result.plan) as engine:
        assert engine.inputs[0].shape == (2, 3, 8, 8) and engine.outputs[0].shape == (2, 3, 8, 8)
        slot = engine.create_slot("cam", depth=2)
        buf = slot.input()
        buf[...] = np.arange(buf.size, dtype=np.float32).reshape(buf.shape)
        assert (slot.submit(buf).wait(10)["out0"] == buf).all()
