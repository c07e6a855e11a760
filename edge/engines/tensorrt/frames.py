"""A frame in flight on a TensorRT slot (InFlightFrame: its buffers, events and GPU preprocessing) and, in CUDA
graph mode, the record's own stream, execution context and captured graph (FrameGraph). docs/gpu.md sections 1
and 4 describe both."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from edge.engines.base import BatchSizes, LetterboxPreprocessing, TensorSpec
from edge.engines.tensorrt.plan import open_execution
from edge.errors import EngineError
from edge.gpu import cuda

if TYPE_CHECKING:
    from edge.gpu.letterbox import GpuLetterbox
    from edge.letterbox import Letterbox

_Owned = TypeVar("_Owned")


class SlotEngine(Protocol):
    """What a slot and its frame records use of their TensorRTEngine (edge/engines/tensorrt/engine.py, which
    imports them and so cannot be imported back)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_sizes: BatchSizes
    engine: Any                                 # TensorRT's ICudaEngine
    logger: Any                                 # plan.make_logger's
    context: cuda.Context
    copy_mode: str
    cuda_graph: bool | str
    preprocessing: LetterboxPreprocessing | None
    takes_frames: bool
    rows_take_frames: bool

    @property
    def dynamic(self) -> bool: ...

    def take_profile(self, slot: str) -> int | None: ...

    def give_profile(self, profile: int | None) -> None: ...


def nbytes(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape)) * spec.dtype.itemsize


def _shaped(spec: TensorSpec, shapes: dict[str, tuple[int, ...]]) -> TensorSpec:
    return TensorSpec(spec.name, shapes[spec.name], spec.dtype) if spec.name in shapes else spec


class InFlightFrame:
    """The memory and events of one frame in flight on a TrtSlot, like the TensorRT samples' HostDeviceMem
    with explicit frees: a host input (mapped in zerocopy mode) and, in copy mode or for GPU preprocessing,
    a device input; host outputs (mapped in zerocopy mode) and, in copy mode, device outputs; the events
    that order its stages over the slot's streams (uploaded, computed, done); for raw frames the engine's
    LetterboxPreprocessing in a GpuLetterbox of its own, made by `letterbox` (the slot passes GpuLetterbox
    where it takes raw frames), which stages and checks one frame (a batched slot's frame: one per row).
    `shapes` are the slot's IO shapes (default: the engine's); `graph` (slot name, index) gives the record of
    a slot in CUDA graph mode its FrameGraph. Created and freed with the context current; a constructor that
    fails frees what it took."""

    def __init__(self, engine: SlotEngine, mode: str, *, letterbox: Callable[..., GpuLetterbox] | None,
                 shapes: dict[str, tuple[int, ...]] | None = None, graph: tuple[str, int] | None = None) -> None:
        self._owned: list[Any] = []
        self.graph: FrameGraph | None = None
        try:
            self._allocate(engine, mode == "zerocopy", letterbox, shapes or {})
            if graph is not None:
                self.graph = self._own(FrameGraph(engine, *graph))
        except BaseException:
            self.free()
            raise

    def _own(self, thing: _Owned) -> _Owned:
        self._owned.append(thing)
        return thing

    def _allocate(self, engine: SlotEngine, zerocopy: bool, letterbox: Callable[..., GpuLetterbox] | None,
                  shapes: dict[str, tuple[int, ...]]) -> None:
        frames = letterbox is not None
        spec, outputs = _shaped(engine.inputs[0], shapes), [_shaped(o, shapes) for o in engine.outputs]
        self.host_input = self._own(cuda.HostBuffer(spec.shape, spec.dtype, mapped=zerocopy))
        self.device_input = self._own(cuda.DeviceBuffer(nbytes(spec))) if frames or not zerocopy else None
        self.host_outputs = {o.name: self._own(cuda.HostBuffer(o.shape, o.dtype, mapped=zerocopy)) for o in outputs}
        self.device_outputs = {} if zerocopy else {o.name: self._own(cuda.DeviceBuffer(nbytes(o))) for o in outputs}
        self.uploaded, self.computed, self.done = (self._own(cuda.Event()) for _ in range(3))
        image, preprocessing = (1, *spec.shape[1:]), engine.preprocessing
        self.letterboxes = [self._own(letterbox(image, spec.dtype, fill=preprocessing.fill, zero_copy=zerocopy))
                            for _ in range(spec.shape[0])] if letterbox is not None else []
        self.letterbox = self.letterboxes[0] if self.letterboxes else None
        outputs = {name: host.device_pointer() if zerocopy else self.device_outputs[name].pointer
                   for name, host in self.host_outputs.items()}
        given = self.host_input.device_pointer() if zerocopy else self.device_input.pointer
        self.addresses = {spec.name: given, **outputs}                       # submit(): the host input as given
        self.frame_addresses = {spec.name: self.device_input.pointer, **outputs} if frames else {}

    def free(self) -> None:
        while self._owned:
            self._owned.pop().free()


class FrameGraph:
    """A frame record's own stream, execution context and CUDA graph, for a slot in CUDA graph mode: the record's
    whole work (upload, letterbox, engine, download) runs in order on its stream, as one CUDA graph, and the K
    records of a camera run side by side, each engine run with its own context and so its own scratch memory
    (TensorRT forbids concurrent enqueues on one context). `captured` is the graph of one kind of submission,
    `key` (a frame's size and pinned buffer, or the host input), captured again when that changes; `box` is that
    frame size's letterbox. Made and freed with the context current, after the stream finished."""

    def __init__(self, engine: SlotEngine, slot: str, index: int) -> None:
        self.stream = cuda.Stream()
        try:
            self.execution = open_execution(engine.engine, engine.logger, engine.inputs[0], None, self.stream.handle,
                                            f"{engine.name} slot {slot} frame {index}")
        except BaseException:
            self.stream.free()
            raise
        self._logger = engine.logger
        self._failed = f"{engine.name}: execute_async_v3 failed on slot {slot}"
        self.captured: cuda.Graph | None = None
        self.key: tuple[Any, ...] | None = None
        self.box: Letterbox | None = None

    def submit(self, frame: InFlightFrame, key: tuple[Any, ...], upload: Callable[[cuda.Stream], None],
               addresses: dict[str, int], *, capture: bool) -> str | None:
        """One submission: the graph when it was captured for `key`; else the work as it is, then (with `capture`)
        its capture for the next submissions of this kind. The frame's `done` event follows. Returns why the
        capture failed (an engine TensorRT cannot capture), else None."""
        problem = None
        if self.captured is not None and self.key == key:
            self.captured.launch(self.stream)
        else:
            self.forget_graph()                     # the record's last submission finished: it was waited for
            self._enqueue(frame, upload, addresses)
            if capture:
                problem = self._capture(frame, key, upload, addresses)
        frame.done.record(self.stream)
        return problem

    def _enqueue(self, frame: InFlightFrame, upload: Callable[[cuda.Stream], None], addresses: dict[str, int]) -> None:
        """The record's whole work on its own stream: upload (or letterbox), engine, downloads."""
        upload(self.stream)
        for name, address in addresses.items():
            self.execution.set_tensor_address(name, address)
        if not self.execution.execute_async_v3(self.stream.handle):
            raise EngineError(self._failed, note=self._logger.text())
        for name, buffer in frame.device_outputs.items():
            buffer.download(frame.host_outputs[name].array, self.stream)

    def _capture(self, frame: InFlightFrame, key: tuple[Any, ...], upload: Callable[[cuda.Stream], None],
                 addresses: dict[str, int]) -> str | None:
        self.stream.synchronize()                   # trtexec's rule: the first enqueue finished before capture
        try:
            self.captured = cuda.Graph.capture(self.stream, lambda: self._enqueue(frame, upload, addresses))
        except EngineError as exc:
            return exc.summary()
        self.key = key
        return None

    def forget_graph(self) -> None:
        if self.captured is not None:
            self.captured.free()
        self.captured = self.key = None

    def free(self) -> None:
        self.forget_graph()
        self.execution = None
        self.stream.free()
