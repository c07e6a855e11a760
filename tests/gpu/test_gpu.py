"""GPU tier (device machine: NVIDIA GPU + pycuda, no TensorRT): edge.gpu.cuda for real, and the TensorRT
backend's slots, streams, buffers, copy modes and GPU preprocessing for real, with tests/support/fake_tensorrt.py
standing in for TensorRT (its network copies the input into the outputs on the given stream via
cuMemcpyAsync; with COMPUTE_NS it first spins that long, a slow engine for the overlap test)."""
from __future__ import annotations

import collections
import inspect
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.engines.base import LetterboxPreprocessing
from tests.support import fake_tensorrt
from tests.support.models import conv_model, make_dynamic

pytestmark = pytest.mark.gpu
LETTERBOX = LetterboxPreprocessing(fill=0.5)        # the detector's


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("edge.engines.repository.read_board", lambda root=Path("/"): fake_tensorrt.BOARD)
    return fake_tensorrt


@pytest.fixture(autouse=True)
def _no_out_of_context_cleanup() -> None:
    """pycuda warns when a CUDA object is collected without its context: everything is freed explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*out-of-thread context could not be cleaned up")
        yield


def test_primary_context_from_several_threads() -> None:
    from edge.gpu import cuda

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
    from edge.gpu import cuda

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
    from edge.engines.tensorrt import build
    from edge.engines.tensorrt.engine import TensorRTEngine

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


def _detector_repo(root: Path) -> Path:
    """An engine repository whose plan's stand-in output (the start of its input, copied) is a YOLO head of
    6 x 32 x 32 values wholly taken from the letterboxed image, so detections depend on every preprocessed
    pixel they read (nothing left uninitialised)."""
    from edge.engines import repository
    from edge.engines.tensorrt import build

    root.mkdir()
    meta = {"anchors": [[[10, 14]]], "strides": [2], "labels": ["a"]}
    onnx = conv_model(root / "m.onnx", input_shape=[1, 3, 64, 64], out_channels=6, stride=2, yolo_meta=meta)
    repository.Manifest(root, "m", [repository.Variant("fp32", "onnx", "m.onnx", repository.sha256_file(onnx))]).save()
    build.build(onnx, say=lambda line: None)
    return root


def _run_service(repo: Path, tmp_path: Path, copy_mode: str, monkeypatch: pytest.MonkeyPatch,
                 cuda_graph: str = "false") -> dict:
    """Run the daemon for 25 frames of two test:// cameras; (camera, frame) -> published detections, how many
    frames each slot letterboxed on the GPU, whether each slot ran CUDA graphs with no capture failing, and what
    the status says of each lane's graphs."""
    from edge.config.loader import parse_config
    from edge.daemon.service import Service
    from edge.engines.tensorrt.slot import TrtSlot
    from edge.wire import protocol

    published: dict[tuple[str, int], np.ndarray] = {}
    on_gpu: collections.Counter[str] = collections.Counter()
    graphs: dict[str, bool] = {}                # slot -> after its last frame, every record had its graph
    det_message, submit_frame = protocol.det_message, TrtSlot._submit_frame_impl

    def record(**fields):
        published[fields["camera"], fields["frame"]] = np.array(fields["detections"], copy=True)
        return det_message(**fields)

    def counted(self, index, image, release):
        on_gpu[self.name] += 1
        submitted = submit_frame(self, index, image, release)
        graphs[self.name] = self.graph_problem is None and all(f.graph is not None and f.graph.captured is not None
                                                               for f in self.frames)
        return submitted
    text = (f"version: 1\ncameras:\n  - id: c0\n    uri: test://bars?size=320x240&realtime=0\n"
            f"  - id: c1\n    uri: test://bars?size=160x120&realtime=0\ntasks:\n  - name: t\n    type: detector\n"
            f"    engines: {repo}\n    allow_onnx: false\n    cameras: [c0, c1]\n    copy_mode: {copy_mode}\n"
            f"    cuda_graph: {cuda_graph}\n"
            f"output:\n  results: ipc://{tmp_path}/r-{copy_mode}-{cuda_graph}.sock\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=25)
    with monkeypatch.context() as patch:
        patch.setattr(protocol, "det_message", record)
        patch.setattr(TrtSlot, "_submit_frame_impl", counted)
        service.start()
        try:
            engine = service.tasks["t"].active()
            assert engine.backend == "tensorrt" and engine.copy_mode == ("copy" if copy_mode == "auto" else copy_mode)
            assert service.run(threading.Event()) == 0
            assert [lane.stats.processed for lane in service.lanes] == [25, 25]
            status = [lane["graphs"] for lane in service.status()["lanes"]]
        finally:
            service.stop()
    return {"published": published, "on_gpu": dict(on_gpu), "graphs": graphs, "status": status}


def test_service_runs_a_plan_with_gpu_preprocessing_in_both_copy_modes(trt, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole daemon on the GPU: the resolver picks the plan built here, lanes hand their raw frames to the
    slots (letterbox on the GPU), and publish the same detections in copy and zerocopy mode, and with
    `cuda_graph: auto` (each camera's frames of two sizes as graphs), as with the CPU letterbox (zero-copy
    works on a discrete GPU too; auto picks copy there)."""
    from edge.engines.tensorrt import engine as trt_engine
    from edge.gpu import cuda

    repo = _detector_repo(tmp_path / "repo")
    assert cuda.integrated() is False and cuda.can_map_host_memory()
    runs = {mode: _run_service(repo, tmp_path, mode, monkeypatch) for mode in ("auto", "zerocopy")}
    runs["graphs"] = _run_service(repo, tmp_path, "auto", monkeypatch, cuda_graph="auto")
    assert runs["graphs"]["graphs"] == {"t.c0": True, "t.c1": True} and runs["graphs"]["status"] == ["on", "on"]
    assert runs["auto"]["graphs"] == {"t.c0": False, "t.c1": False}
    assert runs["auto"]["status"] == ["off: cuda_graph: false"] * 2
    monkeypatch.setattr(trt_engine, "frames_unfit", lambda preprocessing, spec: "the CPU letterbox, for comparison")
    cpu = _run_service(repo, tmp_path, "copy", monkeypatch)
    assert cpu["on_gpu"] == {}
    for run in runs.values():
        assert run["on_gpu"] == {"t.c0": 25, "t.c1": 25}
        common = sorted(set(run["published"]) & set(cpu["published"]))
        assert len(common) >= 40                                 # realtime=0: no frame dropped
        assert any(len(cpu["published"][key]) for key in common)
        for key in common:
            assert np.array_equal(run["published"][key], cpu["published"][key]), key


def test_selftest_cuda_check() -> None:
    from edge.cli import selftest

    check = selftest._cuda(True)
    assert check.status == selftest.OK and "pinned copy round trip" in check.detail


def test_dynamic_batch_plan_runs_at_its_built_shape(trt, tmp_path: Path) -> None:
    from edge.engines.tensorrt import build
    from edge.engines.tensorrt.engine import TensorRTEngine

    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1),
                        {"images": 0, "out0": 0})
    result = build.build(path, shapes=["images:1x3x8x8,2x3x8x8,4x3x8x8"], say=lambda line: None)
    with TensorRTEngine(result.plan) as engine:
        assert engine.inputs[0].shape == (2, 3, 8, 8) and engine.outputs[0].shape == (2, 3, 8, 8)
        slot = engine.create_slot("cam", depth=2)
        buf = slot.input()
        buf[...] = np.arange(buf.size, dtype=np.float32).reshape(buf.shape)
        assert (slot.submit(buf).wait(10)["out0"] == buf).all()


def _identity_plan(path: Path, shape: list[int], elem_type: int) -> Path:
    """A plan whose stand-in network returns its whole input: images -> Identity -> out0, same type and shape."""
    import onnx
    from onnx import helper

    from edge.engines.tensorrt import build

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out0"])], "g",
                              [helper.make_tensor_value_info("images", elem_type, shape)],
                              [helper.make_tensor_value_info("out0", elem_type, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return build.build(path, say=lambda line: None).plan


def test_uploads_and_downloads_overlap_the_engines_compute(trt, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a slow engine (the stand-in spins 20 ms per enqueue), CUDA timing events on the slot's streams show
    the upload of frame n+1 finished before the compute of frame n ended, and the download of frame n-1 done
    while frame n computed (on one stream each would have waited for the compute before it)."""
    from onnx import TensorProto

    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.gpu import cuda

    monkeypatch.setattr(trt, "COMPUTE_NS", 20_000_000)
    plan = _identity_plan(tmp_path / "m.onnx", [1, 3, 416, 416], TensorProto.FLOAT)
    driver = cuda.driver()
    with TensorRTEngine(plan, copy_mode="copy") as engine:
        slot = engine.create_slot("cam", depth=3)
        with engine.context.current():
            marks: dict[str, Any] = {}          # timing events, each recorded after what a submit enqueued
            pendings = []
            for n in range(3):
                buf = slot.input()
                buf[...] = n
                pendings.append(slot.submit(buf))
                for stage, stream in (("upload", slot.upload), ("compute", slot.compute), ("download", slot.download)):
                    marks[f"{stage} {n}"] = driver.Event().record(stream.raw)
            for n, pending in enumerate(pendings):
                assert (pending.wait(10)["out0"] == n).all()
            marks["download 2"].synchronize()
            ms = {name: mark.time_since(marks["compute 0"]) for name, mark in marks.items()}   # from compute 0's end
            marks.clear()                       # destroyed while the context is current
    assert ms["compute 1"] > 15 and ms["compute 2"] > 35                          # the engine is slow
    assert ms["upload 1"] < 0 and ms["upload 2"] < ms["compute 1"]                # n+1 uploaded while n computes
    assert 0 < ms["download 0"] < ms["compute 1"] and ms["compute 1"] < ms["download 1"] < ms["compute 2"]


@pytest.mark.parametrize("elem_type", ["float32", "float16"])
def test_results_match_between_copy_modes_and_the_cpu_path(trt, tmp_path: Path, elem_type: str) -> None:
    """Frames letterboxed in the slot (GPU, K=2 in flight) equal the CPU letterbox bit for bit (fp16: the CPU's
    fp32 cast to fp16), in copy and in zerocopy mode; a tensor submitted from the host comes back unchanged."""
    from onnx import TensorProto

    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.letterbox import letterbox_into

    dtype = np.dtype(elem_type)
    shape = (1, 3, 96, 128)
    kind = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    plan = _identity_plan(tmp_path / "m.onnx", list(shape), kind)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in ((1920, 1080), (641, 479), (100, 300))]
    expected = []
    for frame in frames:
        cpu = np.zeros(shape, np.float32)
        box = letterbox_into(frame, cpu)
        expected.append((cpu.astype(dtype), box))
    tensor = rng.random(shape, np.float32).astype(dtype)
    for mode in ("copy", "zerocopy"):
        with TensorRTEngine(plan, copy_mode=mode, preprocessing=LETTERBOX) as engine:
            slot = engine.create_slot("cam", depth=2)
            assert engine.copy_mode == mode and slot.takes_frames
            in_flight = collections.deque()
            for frame, want in zip(frames + frames, expected + expected):
                if len(in_flight) == 2:
                    (pending, box), (cpu, cpu_box) = in_flight.popleft()
                    assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu), mode
                in_flight.append((slot.submit_frame(frame), want))
            for (pending, box), (cpu, cpu_box) in in_flight:
                assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu), mode
            buf = slot.input()
            buf[...] = tensor
            assert np.array_equal(slot.submit(buf).wait(10)["out0"], tensor), mode


def _letterboxed(frames: list[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> list[tuple[np.ndarray, Any]]:
    from edge.letterbox import letterbox_into

    expected = []
    for frame in frames:
        cpu = np.zeros(shape, np.float32)
        box = letterbox_into(frame, cpu)
        expected.append((cpu.astype(dtype), box))
    return expected


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
@pytest.mark.parametrize("elem_type", ["float32", "float16"])
def test_cuda_graphs_give_the_results_of_the_slot_without_them(trt, tmp_path: Path, mode: str,
                                                                elem_type: str) -> None:
    """cuda_graph: true on real CUDA: each frame record captures its work (upload, letterbox kernel, engine,
    download) after its first frame of a size and launches it for the next ones; every result equals the CPU
    letterbox bit for bit, across frame sizes (each captured again) and for tensors from the host."""
    from onnx import TensorProto

    from edge.engines.tensorrt.engine import TensorRTEngine

    dtype = np.dtype(elem_type)
    shape = (1, 3, 96, 128)
    plan = _identity_plan(tmp_path / "m.onnx", list(shape),
                          TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16)
    rng = np.random.default_rng(5)
    sizes = ((1920, 1080), (641, 479), (100, 300))
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes for _ in range(4)]
    expected = _letterboxed(frames, shape, dtype)
    with TensorRTEngine(plan, copy_mode=mode, preprocessing=LETTERBOX, cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=2)
        assert slot.graphs and engine.copy_mode == mode
        in_flight = collections.deque()
        for frame, want in zip(frames, expected):
            if len(in_flight) == 2:
                (pending, box), (cpu, cpu_box) = in_flight.popleft()
                assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu)
            in_flight.append((slot.submit_frame(frame), want))
        for (pending, box), (cpu, cpu_box) in in_flight:
            assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu)
        assert slot.graph_problem is None and all(f.graph.captured is not None for f in slot.frames)
        for _ in range(3):
            tensor = rng.random(shape, np.float32).astype(dtype)
            buf = slot.input()
            buf[...] = tensor
            assert np.array_equal(slot.submit(buf).wait(10)["out0"], tensor)


def test_work_that_cannot_be_captured_leaves_the_slot_running_without_graphs(
        trt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose enqueue synchronizes its stream (illegal while capturing) fails the capture on real CUDA:
    the slot says why, logs it, and computes every frame right without graphs."""
    from cuda.bindings import driver
    from onnx import TensorProto

    from edge.engines.tensorrt.engine import TensorRTEngine

    enqueue = trt.IExecutionContext.execute_async_v3

    def synchronizing(self: Any, stream_handle: int) -> bool:
        driver.cuStreamSynchronize(stream_handle)
        return enqueue(self, stream_handle)

    monkeypatch.setattr(trt.IExecutionContext, "execute_async_v3", synchronizing)
    shape = (1, 3, 32, 32)
    plan = _identity_plan(tmp_path / "m.onnx", list(shape), TensorProto.FLOAT)
    with TensorRTEngine(plan, copy_mode="copy", cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=2)
        for value in range(5):
            buf = slot.input()
            buf[...] = value
            assert (slot.submit(buf).wait(10)["out0"] == value).all()
        assert slot.graph_problem                       # the capture's error, or the enqueue refused in it
        assert all(f.graph.captured is None for f in slot.frames)


GRAPHS_WITHOUT_RUNTIME = """
import re, sys
sys.modules["cuda.bindings.runtime"] = None                  # None: any import of it fails
from edge.cli import selftest
check = selftest._cuda_graph()
loaded = re.findall(r"\\S*cuda/bindings/\\S*runtime\\S*|\\S*libcudart\\S*", open("/proc/self/maps").read())
print(check.status, check.detail, sorted(set(loaded)), sep="\\n")
"""


def test_cuda_graphs_run_with_the_cuda_runtime_bindings_unimportable() -> None:
    """Issue 16, item 8, on real CUDA: in a process where cuda.bindings.runtime cannot be imported, selftest's graph
    (upload, letterbox kernel, download) is captured and launched through cuda.bindings.driver and equals the CPU
    letterbox, and no CUDA runtime library (cuda-bindings' runtime modules, libcudart) was ever loaded."""
    result = subprocess.run([sys.executable, "-c", GRAPHS_WITHOUT_RUNTIME], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    status, detail, loaded = result.stdout.splitlines()[-3:]
    assert status == "ok" and "max abs difference 0 " in detail, detail
    assert loaded == "[]"


def _driver_answers(api: Any, stream: int, work: Callable[[], None], invalidate: Callable[[], None]) -> list[tuple]:
    """What `api` (cuda.bindings.driver or tests/support/fake_cuda.py's) returns, as CUresult names and handle
    type names,
    for: ending a capture on a stream that does not capture, a capture of `work` begun twice, ended, instantiated,
    destroyed, launched and destroyed, then a capture that `invalidate()` breaks."""
    def names(answer: tuple) -> tuple:
        return tuple(item if item is None else item.name if isinstance(item, api.CUresult)
                     else type(item).__name__ for item in answer)
    mode = api.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    answers = [api.cuStreamEndCapture(stream), api.cuStreamBeginCapture(stream, mode),
               api.cuStreamBeginCapture(stream, mode)]
    work()
    answers.append(api.cuStreamEndCapture(stream))
    answers.append(api.cuGraphInstantiate(answers[-1][1], 0))
    answers += [api.cuGraphDestroy(answers[-2][1]), api.cuGraphLaunch(answers[-1][1], stream),
                api.cuGraphExecDestroy(answers[-1][1]), api.cuStreamBeginCapture(stream, mode)]
    invalidate()
    answers.append(api.cuStreamEndCapture(stream))
    return [names(answer) for answer in answers]


def test_the_driver_api_stand_in_answers_as_cuda_bindings_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/support/fake_cuda.py's cuda.bindings.driver (the CPU tier's) against the real one: the same enum values,
    the
    same parameters, and on the same calls the same CUresults, handles, and None for a handle after an error (a
    capture invalidated here by cuStreamSynchronize on the capturing stream, there by `fail_capture`)."""
    from cuda.bindings import driver

    from edge.gpu import cuda
    from tests.support import fake_cuda

    for kind in (fake_cuda.CUresult, fake_cuda.CUstreamCaptureMode):
        real = getattr(driver, kind.__name__)
        assert {m.name: m.value for m in kind} == {m.name: int(getattr(real, m.name)) for m in kind}
    for name in ("cuStreamBeginCapture", "cuStreamEndCapture", "cuGraphInstantiate", "cuGraphLaunch",
                 "cuGraphExecDestroy", "cuGraphDestroy"):
        fake, real = getattr(fake_cuda, name), getattr(driver, name)
        assert list(inspect.signature(fake).parameters) == list(inspect.signature(real).parameters), name
    context = cuda.Context(0)
    try:
        with context.current():
            stream, device = cuda.Stream(), cuda.DeviceBuffer(64)
            try:
                real = _driver_answers(driver, stream.handle,
                                       lambda: driver.cuMemsetD8Async(device.pointer, 7, 64, stream.handle),
                                       lambda: driver.cuStreamSynchronize(stream.handle))
            finally:
                stream.synchronize()
                device.free()
                stream.free()
    finally:
        context.detach()
    ledger = fake_cuda.install(monkeypatch)
    with fake_cuda.Context(0).current():
        stand_in = _driver_answers(fake_cuda.DRIVER_API, fake_cuda.Stream().handle, lambda: None,
                                   lambda: setattr(ledger, "fail_capture", True))
    assert stand_in == real


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
def test_a_batched_slot_keeps_each_camera_in_its_row(trt, tmp_path: Path, mode: str) -> None:
    """Batching across cameras on the GPU: a batched slot (up to 3 images) on a dynamic-shape plan (batch 1 to 4)
    runs batches of 3, 1, 2 and 3 frames, two in flight, the input shape following them; each frame is
    letterboxed on the GPU into its own row, bit-identical to the CPU letterbox of that frame; a host tensor of 2
    rows comes back unchanged. In copy and in zerocopy mode."""
    from onnx import TensorProto

    from edge.engines.tensorrt import build
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.letterbox import letterbox_into
    from tests.support.models import set_batch

    shape = (1, 3, 96, 128)
    onnx_path = tmp_path / "m.onnx"
    _identity_plan(onnx_path, list(shape), TensorProto.FLOAT)
    plan = build.build(set_batch(onnx_path, None), shapes=["images:1x3x96x128,2x3x96x128,4x3x96x128"],
                       say=lambda line: None).plan
    rng = np.random.default_rng(5)
    sizes = ((1920, 1080), (641, 479), (100, 300))
    batches = [[rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes[:n]] for n in (3, 1, 2, 3)]

    def cpu(frames: list[np.ndarray]) -> np.ndarray:
        rows = np.zeros((len(frames), *shape[1:]), np.float32)
        for i, frame in enumerate(frames):
            letterbox_into(frame, rows[i:i + 1])
        return rows
    with TensorRTEngine(plan, copy_mode=mode, preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cams", depth=2, batch=3)
        assert engine.copy_mode == mode and slot.takes_frames and slot.rows == 3
        in_flight: collections.deque = collections.deque()
        for frames in batches + batches:
            if len(in_flight) == 2:
                pending, want = in_flight.popleft()
                assert np.array_equal(pending.wait(10)["out0"], want), mode
            in_flight.append((slot.submit_frames(frames)[0], cpu(frames)))
        for pending, want in in_flight:
            assert np.array_equal(pending.wait(10)["out0"], want), mode
        buf = slot.input()
        buf[:2] = rng.random((2, *shape[1:]), np.float32)
        assert np.array_equal(slot.submit(buf, count=2).wait(10)["out0"], buf[:2]), mode
