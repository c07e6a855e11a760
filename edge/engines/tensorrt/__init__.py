"""TensorRT backend (TensorRT 10/11 name-based API), with pycuda through edge.gpu.cuda.

One runtime and engine per task variant; per slot (camera) one IExecutionContext and three CUDA
streams (upload, compute, download) ordered by events, and for each of the K frames in flight one
InFlightFrame with its own buffers and events, so the upload of frame n+1 and the download of frame
n-1 run while frame n computes (TrtSlot). Copy modes: `copy` (pinned host + device buffers, async
copies; the default on a discrete GPU) and `zerocopy` (mapped pinned memory handed to the engine; the
default on an integrated GPU such as a Jetson's, read from the device's INTEGRATED attribute). A slot
whose engine input is one fp32/fp16 [1,3,H,W] image also takes raw frames (`submit_frame`): the
GpuLetterbox of the frame's InFlightFrame letterboxes it on the upload stream straight into the
engine's input, bit-identical to the CPU letterbox (edge/gpu/letterbox.py). A plan whose sidecar says it was
built for another device, or that TensorRT warns about ("different models of devices"), is
refused: plans are rebuilt on the target, never silently used elsewhere.

A plan built for a DLA core runs on that core (set on the runtime before deserializing). A
dynamic-shape plan gives each slot an optimization profile of its own: TensorRT requires one per
execution context in concurrent use, so such a plan runs as many slots as it has profiles.

Batching: a plan whose input has a dynamic first dimension takes the batches its profile allows (min to
max), a static one exactly its first dimension. A batched slot (`create_slot(name, batch=N)`) holds
`rows` images per frame in flight, sets the input shape of each submission's batch on its execution
context (only when it changes), copies only the rows a submission runs, and letterboxes a batch of raw
frames on the GPU into rows 0..n-1 (`submit_frames`), one GpuLetterbox per row.

CUDA graphs (`cuda_graph: true`; unbatched slots of a static-shape plan): each frame record gets a stream and
an execution context of its own (FrameLane), its whole work is captured once per kind of submission (frame
size) through edge.gpu.cuda.Graph, and a frame is then one graph launch: a fraction of the host time of the
dozen driver and TensorRT calls it replaces. The K frames of a camera then run side by side on their own
streams instead of overlapping by stage, and each record's context takes its own scratch memory. A capture
that fails (an engine TensorRT cannot capture) is logged and the slot runs on without graphs.
"""
from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge.engines import repository
from edge.engines.base import BatchSizes, Engine, Pending, Slot, TensorSpec, WaitTimeout
from edge.engines.repository import DeviceKey
from edge.errors import EngineError, UsageError
from edge.gpu import cuda
from edge.gpu.letterbox import GpuLetterbox, output_geometry
from edge.letterbox import Letterbox, check_frame
from edge.log import get_logger

log = get_logger("engine")
_Owned = TypeVar("_Owned")
COPY_MODES = ("auto", "copy", "zerocopy")

FOREIGN_PLAN_WARNING = "different models of devices"
INSTALL_HINT = ("TensorRT exists on the Jetson: JetPack 6.x and 7.x ship TensorRT 10 as the apt package"
                " python3-libnvinfer (create the venv with --system-site-packages); TensorRT 11.4.1+ (JetPack 7.2.2+,"
                " AGX Orin and Thor) comes from TensorRT's own Linux SBSA packages instead. Elsewhere run the ONNX"
                " variant (allow_onnx: true)")
DLA_HINT = ("DLA exists on Jetson AGX Orin (2 cores) and Orin NX, not on Orin Nano or Thor; TensorRT 10 from JetPack 6"
            " drives it, TensorRT 11.0 to 11.4.0 have no DLA on Jetson, and 11.4.1+ only on AGX Orin with JetPack"
            " 7.2.2+ (TensorRT's SBSA package)")


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError("TensorRT backend requested but `import tensorrt` failed", note=str(exc),
                          hint=INSTALL_HINT) from exc
    return tensorrt


@functools.cache
def device_key() -> DeviceKey | None:
    """This machine's plan key, or None where TensorRT is not installed (no plan can run here). Read once
    per process: the board, L4T release, TensorRT version and GPU do not change while it runs."""
    try:
        import tensorrt
    except ImportError:
        return None
    return DeviceKey(repository.read_board(), repository.read_l4t(), str(tensorrt.__version__),
                     cuda.compute_capability())


def make_logger(trt: Any) -> Any:
    """A thread-safe trt.ILogger that keeps warnings and errors for error messages."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                with self._lock:
                    self.messages.append((severity, msg))

        def text(self, last: int = 5) -> str:
            with self._lock:
                return " | ".join(m for _, m in self.messages[-last:]) or "(TensorRT logged nothing)"

    return CapturingLogger()


def set_dla_core(runtime: Any, core: int | None, path: Path) -> None:
    """Run a DLA plan's DLA layers on `core`. TensorRT reads the core when it deserializes (unset: core 0), and
    setting it does nothing where there is no DLA, so a missing core is refused here."""
    if core is None:
        return
    if not 0 <= core < runtime.num_DLA_cores:
        raise EngineError(f"refusing {path}: it was built for DLA core {core}, and this device has"
                          f" {runtime.num_DLA_cores} DLA cores", hint=f"rebuild it here without --dla. {DLA_HINT}")
    runtime.DLA_core = core


def deserialize(trt: Any, runtime: Any, blob: bytes, logger: Any, path: Path) -> Any:
    """Deserialize a plan; None from TensorRT and its foreign-device warning both become EngineError."""
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineError(f"TensorRT could not deserialize {path}", note=logger.text(),
                          hint="the plan is corrupt or from another TensorRT version; rebuild it: edge build <onnx>")
    if any(FOREIGN_PLAN_WARNING in msg for _, msg in logger.messages):
        raise EngineError(f"refusing {path}: TensorRT says it was built on another device model",
                          note=logger.text(), hint="build plans on the target itself: edge build <onnx>")
    return engine


def new_execution_context(engine: Any, logger: Any, what: str) -> Any:
    """engine.create_execution_context(), whose None (out of device memory, above all) becomes EngineError."""
    context = engine.create_execution_context()
    if context is None:
        raise EngineError(f"TensorRT could not create an execution context for {what}", note=logger.text(),
                          hint="each camera's slot needs one, with its own device memory; on a Jetson GPU memory is"
                               " the shared RAM: run fewer cameras or preloaded variants, or a smaller model")
    return context


def numpy_dtype(trt: Any, engine: Any, name: str, path: Path) -> np.dtype:
    kind = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(kind))
    except TypeError as exc:                        # trt.nptype: "Could not resolve TensorRT datatype ..."
        raise EngineError(f"{path}: tensor {name} is of TensorRT type {kind}, which numpy has no type for",
                          hint="give the model float32, float16, int8, int32 or uint8 inputs and outputs") from exc


def io_specs(trt: Any, engine: Any, path: Path, built_shapes: dict[str, tuple[int, ...]],
             logger: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """IO tensors with concrete shapes. A dynamic input runs at the shape the plan was built for (the
    profile's opt shape, recorded in the sidecar); output shapes then come from an execution context."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
    dtype = {n: numpy_dtype(trt, engine, n, path) for n in names}
    declared = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
    inputs = []
    for name in (n for n in names if is_input[n]):
        shape = declared[name]
        if -1 in shape:
            if name not in built_shapes:
                raise EngineError(f"{path}: input {name} is dynamic {list(shape)} and the sidecar has no shape for it",
                                  hint="rebuild with edge build --shapes NAME:MIN,OPT,MAX")
            shape = tuple(built_shapes[name])
        inputs.append(TensorSpec(name, shape, dtype[name]))
    if len(inputs) != 1:
        raise EngineError(f"{path} has {len(inputs)} inputs; edge tasks feed exactly one image tensor")
    resolved = dict(declared)
    if any(-1 in s for s in declared.values()):
        context = new_execution_context(engine, logger, str(path))
        for spec in inputs:
            context.set_input_shape(spec.name, spec.shape)
        resolved = {n: tuple(int(d) for d in context.get_tensor_shape(n)) for n in names if not is_input[n]}
        del context
    outputs = []
    for name in (n for n in names if not is_input[n]):
        if -1 in resolved[name]:
            raise EngineError(f"{path}: output {name} has a data-dependent shape {list(resolved[name])},"
                              " which edge does not support (it needs an IOutputAllocator)")
        outputs.append(TensorSpec(name, resolved[name], dtype[name]))
    return inputs, outputs


def open_execution(engine: Any, logger: Any, spec: TensorSpec, profile: int | None, stream_handle: int,
                   what: str) -> Any:
    """One slot's execution context: its own optimization profile on a dynamic-shape plan (selected on the slot's
    stream, before the input shape), then the input shape."""
    execution = new_execution_context(engine, logger, what)
    if profile is not None:
        try:
            execution.set_optimization_profile_async(profile, stream_handle)
        except RuntimeError as exc:                 # the binding raises where the C++ call returns false
            raise EngineError(f"{what}: TensorRT refused optimization profile {profile}", note=logger.text()) from exc
    if not execution.set_input_shape(spec.name, spec.shape):
        raise EngineError(f"{what}: TensorRT refused input shape {list(spec.shape)} for {spec.name}",
                          note=logger.text())
    return execution


def choose_copy_mode(requested: str, device: int) -> tuple[str, str]:
    """(copy or zerocopy, why) for `copy_mode: auto|copy|zerocopy` on this device. auto takes zero-copy on an
    integrated GPU (a Jetson's shares the host's DRAM: a copy would only move bytes within it), copies on a
    discrete one (mapped memory works there too, but the engine would read it over PCIe)."""
    if requested == "copy":
        return "copy", "copy_mode: copy"
    integrated = cuda.integrated(device)
    if requested == "auto" and not integrated:
        return "copy", "auto: a discrete GPU (pinned host and device buffers, async copies)"
    if not cuda.can_map_host_memory(device):
        if requested == "auto":
            return "copy", "auto: an integrated GPU that cannot map host memory"
        raise EngineError("copy_mode: zerocopy, and this GPU cannot map host memory", note=f"CUDA device {device}",
                          hint="set copy_mode: copy (or auto) for this task")
    if requested == "auto":
        return "zerocopy", "auto: an integrated GPU shares the host's memory (mapped pinned buffers, no copies)"
    return "zerocopy", "copy_mode: zerocopy"


def frames_unfit(spec: TensorSpec) -> str | None:
    """Why GPU preprocessing cannot write this engine input, or None where it can (one fp32/fp16 [1,3,H,W])."""
    if len(spec.shape) == 4 and spec.shape[0] != 1:
        return f"input {spec.name} holds a batch of {spec.shape[0]} images"
    try:
        output_geometry(spec.shape, spec.dtype)
    except EngineError as exc:
        return exc.summary()
    return None


def read_sidecar(plan: Path) -> dict[str, Any]:
    path = plan.with_name(plan.name + ".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EngineError(f"plan {plan} has no readable sidecar {path.name}: {exc.strerror}",
                          hint="plans come with the JSON that `edge build` writes; rebuild it") from exc
    except ValueError as exc:
        raise EngineError(f"sidecar {path} is not valid JSON: {exc}") from exc


class TrtPending(Pending):
    views = True

    def __init__(self, slot: TrtSlot, frame: InFlightFrame, release: Callable[[], None], count: int = 0) -> None:
        super().__init__(release)
        self._slot = slot
        self._frame = frame
        self._count = count             # a batched submission's images: the outputs' first rows

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        with self._slot.engine.context.current():
            if not self._frame.done.wait(timeout):
                raise WaitTimeout(f"{self._slot.engine.name}: inference did not finish within {timeout} s")
        if self._count:
            return {name: host.array[:self._count] for name, host in self._frame.host_outputs.items()}
        return {name: host.array for name, host in self._frame.host_outputs.items()}


def _nbytes(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape)) * spec.dtype.itemsize


def _head(array: np.ndarray, rows: int | None) -> np.ndarray:
    """The first `rows` images of a batched buffer (None: all of it)."""
    return array if rows is None else array[:rows]


def _shaped(spec: TensorSpec, shapes: dict[str, tuple[int, ...]]) -> TensorSpec:
    return TensorSpec(spec.name, shapes[spec.name], spec.dtype) if spec.name in shapes else spec


class InFlightFrame:
    """The memory and events of one frame in flight on a TrtSlot, like the TensorRT samples' HostDeviceMem
    with explicit frees: a host input (mapped in zerocopy mode) and, in copy mode or for GPU preprocessing,
    a device input; host outputs (mapped in zerocopy mode) and, in copy mode, device outputs; the events
    that order its stages over the slot's streams (uploaded, computed, done); with GPU preprocessing its
    own GpuLetterbox, which stages one frame (a batched slot's frame: one per row). `shapes` are the
    slot's IO shapes (default: the engine's). Created and freed with the context current; a constructor
    that fails frees what it took."""

    def __init__(self, engine: TensorRTEngine, mode: str, *, frames: bool,
                 shapes: dict[str, tuple[int, ...]] | None = None, graph_lane: str | None = None) -> None:
        self._owned: list[Any] = []
        self.lane: FrameLane | None = None
        try:
            self._allocate(engine, mode == "zerocopy", frames, shapes or {})
            if graph_lane is not None:
                self.lane = self._own(FrameLane(engine, graph_lane))
        except BaseException:
            self.free()
            raise

    def _own(self, thing: _Owned) -> _Owned:
        self._owned.append(thing)
        return thing

    def _allocate(self, engine: TensorRTEngine, zerocopy: bool, frames: bool,
                  shapes: dict[str, tuple[int, ...]]) -> None:
        spec, outputs = _shaped(engine.inputs[0], shapes), [_shaped(o, shapes) for o in engine.outputs]
        self.host_input = self._own(cuda.HostBuffer(spec.shape, spec.dtype, mapped=zerocopy))
        self.device_input = self._own(cuda.DeviceBuffer(_nbytes(spec))) if frames or not zerocopy else None
        self.host_outputs = {o.name: self._own(cuda.HostBuffer(o.shape, o.dtype, mapped=zerocopy)) for o in outputs}
        self.device_outputs = {} if zerocopy else {o.name: self._own(cuda.DeviceBuffer(_nbytes(o))) for o in outputs}
        self.uploaded, self.computed, self.done = (self._own(cuda.Event()) for _ in range(3))
        image = (1, *spec.shape[1:])
        self.letterboxes = [self._own(GpuLetterbox(image, spec.dtype, zero_copy=zerocopy))
                            for _ in range(spec.shape[0] if frames else 0)]
        self.letterbox = self.letterboxes[0] if self.letterboxes else None
        outputs = {name: host.device_pointer() if zerocopy else self.device_outputs[name].pointer
                   for name, host in self.host_outputs.items()}
        given = self.host_input.device_pointer() if zerocopy else self.device_input.pointer
        self.addresses = {spec.name: given, **outputs}                       # submit(): the host input as given
        self.frame_addresses = {spec.name: self.device_input.pointer, **outputs} if frames else {}

    def free(self) -> None:
        while self._owned:
            self._owned.pop().free()


class FrameLane:
    """A frame record's own stream and execution context, for a slot in CUDA graph mode: the record's whole
    work (upload, letterbox, engine, download) runs in order on its stream, as one CUDA graph, and the K
    records of a camera run side by side, each engine run with its own context and so its own scratch memory
    (TensorRT forbids concurrent enqueues on one context). `graph` is captured for one kind of submission,
    `key` (a frame's size and pinned buffer, or the host input), and captured again when that changes; `box`
    is that frame size's letterbox. Made and freed with the context current, after the stream finished."""

    def __init__(self, engine: TensorRTEngine, what: str) -> None:
        self.stream = cuda.Stream()
        try:
            self.execution = open_execution(engine.engine, engine.logger, engine.inputs[0], None, self.stream.handle,
                                            what)
        except BaseException:
            self.stream.free()
            raise
        self.graph: cuda.Graph | None = None
        self.key: tuple[Any, ...] | None = None
        self.box: Letterbox | None = None

    def forget_graph(self) -> None:
        if self.graph is not None:
            self.graph.free()
        self.graph = self.key = None

    def free(self) -> None:
        self.forget_graph()
        self.execution = None
        self.stream.free()


class TrtSlot(Slot):
    """One camera's lane through the engine: an execution context and three streams. `upload` carries the
    frame's H2D copy (or its GPU preprocessing), `compute` the engine, `download` the D2H copies; per frame,
    compute waits for the frame's `uploaded` event and download for its `computed` event, so the upload of
    frame n+1 and the download of frame n-1 run while frame n computes. The copies take two streams because a
    stream runs its work in order: the D2H of frame n waits for frame n's compute, and an upload queued behind
    it on the same stream would wait as long. In zerocopy mode the engine reads and writes mapped host memory
    and nothing is copied. Everything is allocated here after the base constructor; a failure frees it all.

    CUDA graph mode (`cuda_graph: true`, a plan of static shapes, an unbatched slot): each frame record has a
    FrameLane instead, and a submission is one graph launch plus the record's `done` event. The first
    submission of a kind runs its work on the record's stream as it is (TensorRT's first enqueue allocates, so
    it must not be captured), then captures it; a capture that fails is logged and the slot runs without graphs
    from then on, on the same per-record streams (`graph_problem` says why)."""

    engine: TensorRTEngine

    def __init__(self, engine: TensorRTEngine, name: str, depth: int, batch: int | None = None) -> None:
        super().__init__(engine, name, depth, batch)
        self.copy_mode = engine.copy_mode
        self.takes_frames = engine.takes_frames if batch is None else engine.rows_take_frames
        self.profile: int | None = None
        self._holds_profile = False
        self.streams: list[cuda.Stream] = []
        self.execution: Any = None
        self.frames: list[InFlightFrame] = []
        self._spec = engine.inputs[0] if self.rows is None else _rows_of(engine.inputs[0], self.rows)
        self._set_rows = self._spec.shape[0]         # the batch the execution context's input shape is set to
        why_not = self._why_no_graphs()
        self.graphs = why_not is None
        self.graph_problem: str | None = None           # why a graph-mode slot runs without graphs after all
        if engine.cuda_graph:
            log.info("%s slot %s | CUDA graphs %s", engine.name, name, "on" if self.graphs else f"off: {why_not}")
        with engine.context.current():
            try:
                self._open()
            except BaseException:
                self._release()
                raise

    def _why_no_graphs(self) -> str | None:
        if not self.engine.cuda_graph:
            return "cuda_graph: false"
        if self.batch is not None:
            return "a batched slot's input shape changes with the cameras that have a frame"
        if self.engine.dynamic:
            return "a dynamic-shape plan (a graph bakes in its shapes)"
        return None

    def _open(self) -> None:
        engine = self.engine
        if self.graphs:
            for index in range(self.depth):
                self.frames.append(InFlightFrame(engine, self.copy_mode, frames=self.takes_frames,
                                                 graph_lane=f"{engine.name} slot {self.name} frame {index}"))
            return
        self.profile = engine.take_profile(self.name)
        self._holds_profile = True
        for _ in range(3):
            self.streams.append(cuda.Stream())
        self.upload, self.compute, self.download = self.streams
        self.execution = open_execution(engine.engine, engine.logger, self._spec, self.profile,
                                        self.compute.handle, f"{engine.name} slot {self.name}")
        shapes = None if self.batch is None else self._batch_shapes()
        for _ in range(self.depth):
            self.frames.append(InFlightFrame(engine, self.copy_mode, frames=self.takes_frames, shapes=shapes))

    def _batch_shapes(self) -> dict[str, tuple[int, ...]]:
        """A batched slot's IO shapes at its full batch: the outputs' from the execution context, each of
        which must keep the batch as its first dimension."""
        shapes = {self._spec.name: self._spec.shape}
        for spec in self.engine.outputs:
            shape = tuple(int(d) for d in self.execution.get_tensor_shape(spec.name))
            if not shape or shape[0] != self.rows:
                raise EngineError(f"{self.engine.name}: output {spec.name} has shape {list(shape)} for a batch of"
                                  f" {self.rows} images: its first dimension is not the batch",
                                  hint="batch only models whose outputs keep the batch as their first dimension")
            shapes[spec.name] = shape
        return shapes

    def _all_streams(self) -> list[cuda.Stream]:
        return [*self.streams, *(frame.lane.stream for frame in self.frames if frame.lane is not None)]

    def _release(self) -> None:
        """Wait for the streams, then free everything this slot holds (the context current)."""
        for stream in self._all_streams():
            stream.synchronize()
        self.execution = None                       # before its profile goes back
        if self._holds_profile:
            self._holds_profile = False
            self.engine.give_profile(self.profile)
        while self.frames:
            self.frames.pop().free()
        while self.streams:
            self.streams.pop().free()

    def _input(self, index: int) -> np.ndarray:
        return self.frames[index].host_input.array

    def _frame_buffer(self, index: int, width: int, height: int) -> np.ndarray:
        with self.engine.context.current():
            return self.frames[index].letterbox.frame_buffer(width, height)

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        frame, count = self.frames[index], self._counts[index]
        copying = self.copy_mode == "copy"
        if self.graphs:
            def upload(stream: cuda.Stream) -> None:
                if copying:
                    frame.device_input.upload(frame.host_input.array, stream)

            with self.engine.context.current(), self._settled_on_error():
                self._graph_run(frame, ("input",), upload, frame.addresses)
            return TrtPending(self, frame, release)
        with self.engine.context.current(), self._settled_on_error():
            rows = self._batch_rows(count)
            if copying:
                frame.device_input.upload(_head(frame.host_input.array, rows), self.upload)
            self._run(frame, frame.addresses, uploaded=copying, rows=rows)
        return TrtPending(self, frame, release, count)

    def _submit_frames_impl(self, index: int, images: list[np.ndarray], release: Callable[[], None]
                            ) -> tuple[Pending, list[Letterbox]]:
        for image in images:
            check_frame(image)                      # a bad frame enqueues nothing (and stalls no stream)
        frame = self.frames[index]
        with self.engine.context.current(), self._settled_on_error():
            rows = self._batch_rows(len(images))
            pointer, step = frame.device_input.pointer, frame.letterbox.nbytes
            boxes = [box.run(image, pointer + i * step, self.upload)
                     for i, (box, image) in enumerate(zip(frame.letterboxes, images))]
            self._run(frame, frame.frame_addresses, uploaded=True, rows=rows)
        return TrtPending(self, frame, release, len(images)), boxes

    def _batch_rows(self, count: int) -> int | None:
        """The rows a batched submission of `count` images runs (None: not batched), with the execution
        context's input shape set to them where that changes (a dynamic-shape plan)."""
        if not count:
            return None
        rows = self.engine.batch_sizes.rows(count)
        if rows != self._set_rows:
            shape = (rows, *self._spec.shape[1:])
            if not self.execution.set_input_shape(self._spec.name, shape):
                raise EngineError(f"{self.engine.name}: TensorRT refused input shape {list(shape)} on slot"
                                  f" {self.name}", note=self.engine.logger.text())
            self._set_rows = rows
        return rows

    def _submit_frame_impl(self, index: int, image: np.ndarray, release: Callable[[], None]
                           ) -> tuple[Pending, Letterbox]:
        check_frame(image)                          # a bad frame enqueues nothing (and stalls no stream)
        frame = self.frames[index]
        with self.engine.context.current(), self._settled_on_error():
            if self.graphs:
                box = self._graph_frame(frame, image)
            else:
                box = frame.letterbox.run(image, frame.device_input.pointer, self.upload)
                self._run(frame, frame.frame_addresses, uploaded=True)
        return TrtPending(self, frame, release), box

    def _graph_frame(self, frame: InFlightFrame, image: np.ndarray) -> Letterbox:
        """Stage `image` in the record's pinned buffer, then run the record's graph for frames of its size."""
        lane, letterbox = frame.lane, frame.letterbox
        staged = letterbox.stage(image)

        def upload(stream: cuda.Stream) -> None:
            lane.box = letterbox.enqueue(staged, frame.device_input.pointer, stream)

        self._graph_run(frame, ("frame", staged.shape, staged.ctypes.data), upload, frame.frame_addresses)
        return lane.box

    def _graph_run(self, frame: InFlightFrame, key: tuple[Any, ...], upload: Callable[[cuda.Stream], None],
                   addresses: dict[str, int]) -> None:
        """One submission in graph mode: the record's graph when it was captured for `key`; else the work as it
        is, then (unless graphs failed on this slot) its capture for the next submissions of this kind."""
        lane = frame.lane
        if lane.graph is not None and lane.key == key:
            lane.graph.launch(lane.stream)
        else:
            lane.forget_graph()                     # the record's last submission finished: it was waited for
            self._enqueue_on_lane(frame, upload, addresses)
            if self.graph_problem is None:
                self._capture(frame, key, upload, addresses)
        frame.done.record(lane.stream)

    def _enqueue_on_lane(self, frame: InFlightFrame, upload: Callable[[cuda.Stream], None],
                         addresses: dict[str, int]) -> None:
        """The record's whole work on its own stream: upload (or letterbox), engine, downloads."""
        lane = frame.lane
        upload(lane.stream)
        for name, address in addresses.items():
            lane.execution.set_tensor_address(name, address)
        if not lane.execution.execute_async_v3(lane.stream.handle):
            raise EngineError(f"{self.engine.name}: execute_async_v3 failed on slot {self.name}",
                              note=self.engine.logger.text())
        for name, buffer in frame.device_outputs.items():
            buffer.download(frame.host_outputs[name].array, lane.stream)

    def _capture(self, frame: InFlightFrame, key: tuple[Any, ...], upload: Callable[[cuda.Stream], None],
                 addresses: dict[str, int]) -> None:
        lane = frame.lane
        lane.stream.synchronize()                   # trtexec's rule: the first enqueue finished before capture
        try:
            lane.graph = cuda.Graph.capture(lane.stream, lambda: self._enqueue_on_lane(frame, upload, addresses))
        except EngineError as exc:
            self.graph_problem = exc.summary()
            log.warning("%s slot %s | CUDA graph capture failed, running without graphs: %s", self.engine.name,
                        self.name, self.graph_problem)
            return
        lane.key = key

    def _run(self, frame: InFlightFrame, addresses: dict[str, int], *, uploaded: bool, rows: int | None = None
             ) -> None:
        """Enqueue the engine after the frame's upload stage (when it had one), then the downloads (copy mode;
        of a batched submission's `rows` only); the frame's `done` event follows its last stage."""
        if uploaded:
            frame.uploaded.record(self.upload)
            self.compute.wait(frame.uploaded)
        for name, address in addresses.items():
            self.execution.set_tensor_address(name, address)
        if not self.execution.execute_async_v3(self.compute.handle):
            raise EngineError(f"{self.engine.name}: execute_async_v3 failed on slot {self.name}",
                              note=self.engine.logger.text())
        if not frame.device_outputs:                # zerocopy: the engine wrote the host outputs itself
            frame.done.record(self.compute)
            return
        frame.computed.record(self.compute)
        self.download.wait(frame.computed)
        for name, buffer in frame.device_outputs.items():
            buffer.download(_head(frame.host_outputs[name].array, rows), self.download)
        frame.done.record(self.download)

    @contextlib.contextmanager
    def _settled_on_error(self) -> Iterator[None]:
        """A submission that fails gives its frame back only after what it enqueued has finished."""
        try:
            yield
        except BaseException:
            for stream in self._all_streams():
                stream.synchronize()
            raise

    def _close_impl(self) -> None:
        with self.engine.context.current():
            self._release()


class TensorRTEngine(Engine):
    """A TensorRT plan built by `edge build` (its sidecar JSON holds the device key and the model metadata)."""

    backend = "tensorrt"
    batch_hint = ("build the plan from an ONNX model with a dynamic batch dimension, with a profile that reaches"
                  " batch {n}: edge build model.onnx --shapes images:1x3x416x416,4x3x416x416,8x3x416x416"
                  " (MIN,OPT,MAX), or from a model with a fixed batch of {n}")

    def __init__(self, path: Any, *, precision: str = "fp32", device: int = 0, copy_mode: str = "auto",
                 gpu_preprocess: bool = True, cuda_graph: bool = False) -> None:
        super().__init__(path, precision=precision)
        if copy_mode not in COPY_MODES:
            raise UsageError(f"copy_mode {copy_mode!r} is not one of {', '.join(COPY_MODES)}")
        self.device = device
        self.requested_copy_mode = copy_mode
        self.copy_mode = "copy"                           # resolved by activate()
        self.gpu_preprocess = gpu_preprocess
        self.cuda_graph = cuda_graph                      # unbatched slots of a static-shape plan run CUDA graphs
        self.takes_frames = False                         # slots letterbox raw frames on the GPU (activate())
        self.rows_take_frames = False                     # batched slots do, one image per row (activate())
        self.context: cuda.Context
        self.engine: Any = None
        self._profiles_lock = threading.Lock()
        self._free_profiles: list[int] | None = None      # None: static shapes, slots share profile 0

    def _activate_impl(self) -> None:
        trt = import_tensorrt()
        sidecar = read_sidecar(self.path)
        here = device_key()
        built = DeviceKey.from_json(sidecar["device"])
        if here is None or built.platform() != here.platform():
            raise EngineError(f"refusing {self.path}: built for {built.platform()},"
                              f" this device is {here.platform() if here else 'without TensorRT'}",
                              hint=f"rebuild it here: edge build {sidecar.get('source', {}).get('file', '<onnx>')}")
        self.metadata = dict(sidecar.get("metadata", {}))
        self.copy_mode, why = choose_copy_mode(self.requested_copy_mode, self.device)
        self.logger = make_logger(trt)
        self.context = cuda.Context(self.device)
        try:
            with self.context.current():
                self._load(trt, sidecar.get("dla_core"), dict(built.input_shapes))
        except Exception:
            self.runtime = self.engine = None
            self.context.detach()
            raise
        unfit = frames_unfit(self.inputs[0]) if self.gpu_preprocess else "gpu_preprocess=False"
        self.takes_frames = unfit is None
        self.rows_take_frames = self.gpu_preprocess and frames_unfit(_rows_of(self.inputs[0], 1)) is None
        log.info("%s | copy mode %s (%s); preprocessing on the %s", self.name, self.copy_mode, why,
                 "GPU" if unfit is None else f"CPU: {unfit}")

    def _load(self, trt: Any, dla_core: int | None, built_shapes: dict[str, tuple[int, ...]]) -> None:
        self.runtime = trt.Runtime(self.logger)
        set_dla_core(self.runtime, dla_core, self.path)
        self.engine = deserialize(trt, self.runtime, self.path.read_bytes(), self.logger, self.path)
        self.inputs, self.outputs = io_specs(trt, self.engine, self.path, built_shapes, self.logger)
        dynamic = any(-1 in tuple(self.engine.get_tensor_shape(spec.name)) for spec in self.inputs)
        self._free_profiles = list(range(self.engine.num_optimization_profiles)) if dynamic else None
        self.batch_sizes = self._batch_sizes()

    def _batch_sizes(self) -> BatchSizes:
        """The batches the plan runs: its profile's range of a dynamic first dimension, else that dimension."""
        spec = self.inputs[0]
        if not spec.shape:
            return BatchSizes(1, 1)
        if int(self.engine.get_tensor_shape(spec.name)[0]) != -1:
            return BatchSizes(spec.shape[0], spec.shape[0])
        low, _, high = self.engine.get_tensor_profile_shape(spec.name, 0)
        return BatchSizes(int(low[0]), int(high[0]))

    @property
    def dynamic(self) -> bool:
        """Whether the plan has a dynamic-shape input (its slots each take an optimization profile)."""
        return self._free_profiles is not None

    def take_profile(self, slot: str) -> int | None:
        """The optimization profile a new slot runs on: its own one on a dynamic-shape plan, None otherwise."""
        with self._profiles_lock:
            if self._free_profiles is None:
                return None
            if not self._free_profiles:
                raise EngineError(f"{self.name}: slot {slot!r} needs an optimization profile of its own, and all"
                                  f" {self.engine.num_optimization_profiles} of this dynamic-shape plan are in use",
                                  note=f"slots: {', '.join(s.name for s in self._slots)}",
                                  hint="TensorRT runs each execution context of a dynamic-shape plan in concurrent use"
                                       " on its own profile: give the task fewer cameras, or build the plan with one"
                                       " profile per camera (edge.tools.build.build(..., profiles=N))")
            return self._free_profiles.pop(0)

    def give_profile(self, profile: int | None) -> None:
        if profile is not None:
            with self._profiles_lock:
                self._free_profiles = sorted([*(self._free_profiles or []), profile])

    def _deactivate_impl(self) -> None:
        with self.context.current():
            self.engine = None
            self.runtime = None
        self.context.detach()

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        return TrtSlot(self, name, depth)

    def _create_batch_slot_impl(self, name: str, depth: int, batch: int) -> Slot:
        return TrtSlot(self, name, depth, batch)


def _rows_of(spec: TensorSpec, rows: int) -> TensorSpec:
    """`spec` with `rows` images in its first dimension."""
    return TensorSpec(spec.name, (rows, *spec.shape[1:]), spec.dtype)
