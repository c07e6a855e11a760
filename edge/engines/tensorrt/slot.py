"""One camera's slot on a TensorRT engine (TrtSlot): an execution context and three CUDA streams (upload,
compute, download) ordered by events, and one InFlightFrame per frame in flight, so the upload of frame n+1
and the download of frame n-1 run while frame n computes; its results (TrtPending); the copy modes (`copy`:
pinned host and device buffers, async copies; `zerocopy`: mapped pinned memory handed to the engine). A slot
whose engine input is one fp32/fp16 [1,3,H,W] image also takes raw frames (`submit_frame`) and letterboxes
them on the GPU, and takes frames a decoder left in device memory (`submit_device_frame`: the colour kernel
reads them in place); a batched slot holds `rows` images per frame in flight and letterboxes a batch of frames
into rows 0..n-1 (`submit_frames`, `submit_device_frames`). In CUDA graph mode each frame record runs on a
FrameGraph of its own (frames.py). docs/gpu.md describes the whole path.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.engines.base import LetterboxPreprocessing, Pending, Slot, TensorSpec, WaitTimeout
from edge.engines.tensorrt.frames import InFlightFrame, SlotEngine
from edge.engines.tensorrt.plan import open_execution
from edge.errors import EngineError
from edge.gpu import cuda
from edge.gpu.letterbox import GpuLetterbox, output_geometry
from edge.letterbox import Letterbox
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.gpu.surfaces import DeviceFrame

log = get_logger("engine")
COPY_MODES = ("auto", "copy", "zerocopy")


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


def frames_unfit(preprocessing: LetterboxPreprocessing | None, spec: TensorSpec) -> str | None:
    """Why slots cannot run `preprocessing` on raw frames into this engine input, or None where they can (a
    letterbox into one fp32/fp16 [1,3,H,W])."""
    if preprocessing is None:
        return "no preprocessing named for the GPU"
    if len(spec.shape) == 4 and spec.shape[0] != 1:
        return f"input {spec.name} holds a batch of {spec.shape[0]} images"
    try:
        output_geometry(spec.shape, spec.dtype)
    except EngineError as exc:
        return exc.summary()
    return None


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


def _head(array: np.ndarray, rows: int | None) -> np.ndarray:
    """The first `rows` images of a batched buffer (None: all of it)."""
    return array if rows is None else array[:rows]


def rows_of(spec: TensorSpec, rows: int) -> TensorSpec:
    """`spec` with `rows` images in its first dimension."""
    return TensorSpec(spec.name, (rows, *spec.shape[1:]), spec.dtype)


class TrtSlot(Slot):
    """One camera's way through the engine: an execution context and three streams. `upload` carries the
    frame's H2D copy (or its GPU preprocessing), `compute` the engine, `download` the D2H copies; per frame,
    compute waits for the frame's `uploaded` event and download for its `computed` event, so the upload of
    frame n+1 and the download of frame n-1 run while frame n computes. The copies take two streams because a
    stream runs its work in order: the D2H of frame n waits for frame n's compute, and an upload queued behind
    it on the same stream would wait as long. In zerocopy mode the engine reads and writes mapped host memory
    and nothing is copied. Everything is allocated here after the base constructor; a failure frees it all.

    CUDA graph mode (`cuda_graph: auto` or true, a plan of static shapes, an unbatched slot; auto also needs
    cuda-bindings to import): each frame record has a FrameGraph instead, and a submission is one graph launch
    plus the record's `done` event. The first submission of a kind runs its work on the record's stream as it is
    (TensorRT's first enqueue allocates, so it must not be captured), then captures it; a capture that fails is
    logged and the slot runs without graphs from then on, on the same per-record streams (`graph_problem` says
    why). `graph_status` says which of these holds."""

    engine: SlotEngine

    def __init__(self, engine: SlotEngine, name: str, depth: int, batch: int | None = None) -> None:
        super().__init__(engine, name, depth, batch)
        self.copy_mode = engine.copy_mode
        self.takes_frames = engine.takes_frames if batch is None else engine.rows_take_frames
        self.takes_device_frames = self.takes_frames
        self._letterbox = GpuLetterbox if self.takes_frames else None   # each frame record's own, for raw frames
        self.profile: int | None = None
        self._holds_profile = False
        self.streams: list[cuda.Stream] = []
        self.execution: Any = None
        self.frames: list[InFlightFrame] = []
        self._spec = engine.inputs[0] if self.rows is None else rows_of(engine.inputs[0], self.rows)
        self._set_rows = self._spec.shape[0]         # the batch the execution context's input shape is set to
        self.why_no_graphs = self._why_no_graphs()
        self.graphs = self.why_no_graphs is None
        self.graph_problem: str | None = None           # why a graph-mode slot runs without graphs after all
        if engine.cuda_graph is not False:
            asked_in_vain = engine.cuda_graph is True and not self.graphs
            log.log(logging.WARNING if asked_in_vain else logging.INFO, "%s slot %s | CUDA graphs %s", engine.name,
                    name, "on" if self.graphs else f"off: {self.why_no_graphs}")
        with engine.context.current():
            try:
                self._open()
            except BaseException:
                self._release()
                raise

    def _why_no_graphs(self) -> str | None:
        """Why this slot runs without CUDA graphs, or None where it captures them on its first frames."""
        if self.engine.cuda_graph is False:
            return "cuda_graph: false"
        if self.batch is not None:
            return "a batched slot's input shape changes with the cameras that have a frame"
        if self.engine.dynamic:
            return "a dynamic-shape plan (a graph bakes in its shapes)"
        if self.engine.cuda_graph == "auto":
            return cuda.graph_support()             # true: tried anyway, and a capture that fails says why
        return None

    @property
    def graph_status(self) -> str:
        """Which frames run as CUDA graphs: "on", "off: why", or "failed: why" (a capture failed)."""
        if self.graph_problem is not None:
            return f"failed: {self.graph_problem}"
        return "on" if self.graphs else f"off: {self.why_no_graphs}"

    def _open(self) -> None:
        engine = self.engine
        if self.graphs:
            for index in range(self.depth):
                self.frames.append(InFlightFrame(engine, self.copy_mode, letterbox=self._letterbox,
                                                 graph=(self.name, index)))
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
            self.frames.append(InFlightFrame(engine, self.copy_mode, letterbox=self._letterbox, shapes=shapes))

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
        return [*self.streams, *(frame.graph.stream for frame in self.frames if frame.graph is not None)]

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
        frame = self.frames[index]
        with self.engine.context.current():
            staged = [box.stage(image) for box, image in zip(frame.letterboxes, images)]  # each checked: a bad one
            with self._settled_on_error():                                                 # enqueues nothing
                rows = self._batch_rows(len(images))
                pointer, step = frame.device_input.pointer, frame.letterbox.nbytes
                boxes = [box.run_staged(image, pointer + i * step, self.upload)
                         for i, (box, image) in enumerate(zip(frame.letterboxes, staged))]
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
        frame = self.frames[index]
        with self.engine.context.current():
            staged = frame.letterbox.stage(image)   # checked there: a bad frame enqueues nothing (stalls no stream)
            with self._settled_on_error():
                if self.graphs:
                    box = self._graph_frame(frame, staged)
                else:
                    box = frame.letterbox.run_staged(staged, frame.device_input.pointer, self.upload)
                    self._run(frame, frame.frame_addresses, uploaded=True)
        return TrtPending(self, frame, release), box

    def _submit_device_frames_impl(self, index: int, frames: list[DeviceFrame], release: Callable[[], None]
                                   ) -> tuple[Pending, list[Letterbox]]:
        """Each frame's colour + letterbox kernel on the upload stream (in graph mode the record's stream, before
        its graph: a surface's address is not the graph's to bake in, docs/gpu.md section 4), after the frame's
        `ready` event; each frame released on that stream once its kernel is enqueued, then the engine."""
        record, count = self.frames[index], self._counts[index]
        released = 0
        try:
            with self.engine.context.current(), self._settled_on_error():
                stream = record.graph.stream if self.graphs else self.upload
                rows = self._batch_rows(count)
                pointer, step = record.device_input.pointer, record.letterbox.nbytes
                boxes = []
                for row, (box, frame) in enumerate(zip(record.letterboxes, frames)):
                    if frame.ready is not None:
                        stream.wait(frame.ready)
                    boxes.append(box.launch_planes(frame.planes, frame.pitch, frame.width, frame.height,
                                                   pointer + row * step, stream, pixel_format=frame.pixel_format,
                                                   matrix=frame.matrix, full_range=frame.full_range))
                for frame in frames:
                    frame.release(stream)
                    released += 1
                if self.graphs:
                    self._graph_run(record, ("device",), lambda stream: None, record.frame_addresses)
                else:
                    self._run(record, record.frame_addresses, uploaded=True, rows=rows)
        finally:
            for frame in frames[released:]:         # failed: the streams settled, nothing reads them any more
                frame.release(None)
        return TrtPending(self, record, release, count), boxes

    @property
    def device_frames_refused(self) -> str:
        spec = self.engine.inputs[0] if self.batch is None else rows_of(self.engine.inputs[0], 1)
        return frames_unfit(self.engine.preprocessing, spec) or ""

    def _graph_frame(self, frame: InFlightFrame, staged: np.ndarray) -> Letterbox:
        """Run the record's graph for frames of this size on a frame staged in the record's pinned buffer."""
        graph, letterbox = frame.graph, frame.letterbox

        def upload(stream: cuda.Stream) -> None:
            graph.box = letterbox.enqueue(staged, frame.device_input.pointer, stream)

        self._graph_run(frame, ("frame", staged.shape, staged.ctypes.data), upload, frame.frame_addresses)
        return graph.box

    def _graph_run(self, frame: InFlightFrame, key: tuple[Any, ...], upload: Callable[[cuda.Stream], None],
                   addresses: dict[str, int]) -> None:
        """One submission in graph mode, captured unless graphs already failed on this slot (then it runs on
        without them, on the same per-record streams)."""
        problem = frame.graph.submit(frame, key, upload, addresses, capture=self.graph_problem is None)
        if problem is not None:
            self.graph_problem = problem
            log.warning("%s slot %s | CUDA graph capture failed, running without graphs: %s", self.engine.name,
                        self.name, self.graph_problem)

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

