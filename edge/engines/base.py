"""The engine contract: an Engine per task variant creates one Slot per camera (or camera group), and the
Preprocessing a task can name for a backend to run itself.

A slot owns K input buffers and its execution resources (CUDA streams, or a worker thread): `buf =
slot.input()`, fill it, `pending = slot.submit(buf)`, later `outputs = pending.wait()`; a slot that
`takes_frames` preprocesses raw frames itself (`submit_frame`, returning the Letterbox postprocessing needs), and
one that `takes_device_frames` reads frames a decoder left in device memory in place (`submit_device_frame`).
Up to K submissions are in flight, and a buffer is reused only after its pending result was waited for. A slot
made with `batch=N` carries up to N images a submission (`slot.rows`, `submit(buf, count=n)`). A TensorRT
slot: docs/gpu.md; batching: docs/performance.md, "Batching across cameras".
"""
from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from edge.errors import EngineError, UsageError
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.gpu.surfaces import DeviceFrame
    from edge.letterbox import Letterbox

log = get_logger("engine")
_Started = TypeVar("_Started")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]     # -1 marks a dynamic dimension
    dtype: np.dtype


class Preprocessing:
    """How a task turns a raw BGR uint8 frame into its engine input, named so that a backend can run it itself
    (a slot that `takes_frames`). Each kind is a subclass; a backend refuses a kind it does not know."""


@dataclasses.dataclass(frozen=True)
class LetterboxPreprocessing(Preprocessing):
    """edge.letterbox.letterbox_into: the frame resized keeping its aspect ratio into an [N,3,H,W] input, RGB,
    scaled to 0..1, the rest of the input `fill`."""

    fill: float


@dataclasses.dataclass(frozen=True)
class BatchSizes:
    """How many images one execution of an engine takes (its input's first dimension): `low` to `high`,
    `high` None where nothing bounds it (an ONNX model's symbolic batch dimension). A fixed batch of N is
    N to N; a batch-1 model 1 to 1."""

    low: int
    high: int | None

    def takes(self, count: int) -> bool:
        return self.high is None or count <= self.high

    def rows(self, count: int) -> int:
        """Rows an execution of `count` images runs: `count`, padded up to the smallest batch the engine takes."""
        return max(count, self.low)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"a fixed batch of {self.low}"
        return f"batches of {self.low} or more" if self.high is None else f"batches of {self.low} to {self.high}"


def batch_error(engine: Engine, count: int, what: str, *, also: str = "") -> EngineError:
    """The error for `count` images in one execution of `engine`, which does not take that many."""
    spec = engine.inputs[0]
    return EngineError(f"{what}: {count} images in one execution, and {engine.name} runs {engine.batch_sizes}",
                       note=f"input {spec.name} {list(spec.shape)} of {engine.path}",
                       hint=engine.batch_hint.replace("{n}", str(count)) + also)


class WaitTimeout(EngineError):
    """`pending.wait(timeout)` ran out while the work still runs: its buffers stay in flight (wait again,
    or close the slot, which waits for them)."""


class Pending(abc.ABC):
    """The result of one submission; `wait()` returns the outputs by name and frees the slot's buffer."""

    views = False       # True where _wait_impl returns the slot's own output buffers (copied unless asked not to)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._waited = False

    def wait(self, timeout: float | None = None, *, copy: bool = True) -> dict[str, np.ndarray]:
        """The outputs; after `timeout` s WaitTimeout (the work keeps its buffers). With copy=False a backend may
        return its own output buffers, valid until the slot reuses them (`depth` submissions later)."""
        try:
            outputs = self._wait_impl(timeout)
            if copy and self.views:
                outputs = {name: array.copy() for name, array in outputs.items()}
        except WaitTimeout:
            raise
        except BaseException:
            self._done()
            raise
        self._done()
        return outputs

    def _done(self) -> None:
        if not self._waited:
            self._waited = True
            self._release()

    @abc.abstractmethod
    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]: ...


class Slot(abc.ABC):
    """Per-camera execution lane of an engine with a ring of `depth` input buffers, which the backend's
    constructor allocates after this one (and frees again when it fails)."""

    takes_frames = False        # True where submit_frame() preprocesses raw frames itself
    takes_device_frames = False     # True where submit_device_frame() reads device frames in place
    graph_status: str | None = None     # which frames run as CUDA graphs ("on", "off: why"); None: no graphs here

    def __init__(self, engine: Engine, name: str, depth: int, batch: int | None = None) -> None:
        if depth < 1:
            raise UsageError(f"slot {name!r}: depth must be at least 1, got {depth}")
        self.engine = engine
        self.name = name
        self.depth = depth
        self.batch = batch          # None: the engine's own input shape; N: up to N images per submission
        self.rows = None if batch is None else engine.batch_sizes.rows(batch)   # images its input buffers hold
        self._lock = threading.Lock()
        self._busy = [False] * depth
        self._counts = [0] * depth  # images in each submission of a batched slot (0: not batched)
        self._next = 0
        self._closed = False

    @abc.abstractmethod
    def _input(self, index: int) -> np.ndarray:
        """The host input buffer of ring position `index`."""

    @abc.abstractmethod
    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending: ...

    def _submit_frame_impl(self, index: int, image: np.ndarray, release: Callable[[], None]
                           ) -> tuple[Pending, Letterbox]:
        """Preprocess `image` into ring position `index` and start inference: slots with `takes_frames`."""
        raise NotImplementedError

    def _submit_frames_impl(self, index: int, images: list[np.ndarray], release: Callable[[], None]
                            ) -> tuple[Pending, list[Letterbox]]:
        """Letterbox `images` into rows of ring position `index` and start inference: batched `takes_frames` slots."""
        raise NotImplementedError

    def _submit_device_frames_impl(self, index: int, frames: list[DeviceFrame], release: Callable[[], None]
                                   ) -> tuple[Pending, list[Letterbox]]:
        """Letterbox device `frames` into rows 0..n-1 of ring position `index` (an unbatched slot: one frame,
        its input) and start inference; release each frame once its kernel was enqueued, or on failure once
        nothing enqueued reads it any more: slots with `takes_device_frames`."""
        raise NotImplementedError

    @abc.abstractmethod
    def _close_impl(self) -> None: ...

    @property
    def device_frames_refused(self) -> str:
        """Why this slot reads a device frame only after a copy to the host (where not `takes_device_frames`)."""
        return f"the {self.engine.backend} backend reads host frames"

    def input(self) -> np.ndarray:
        """The host buffer the next `submit` will send; write the preprocessed tensor into it."""
        with self._lock:
            self._check_open()
            self._check_free(self._next)
            return self._input(self._next)

    def submit(self, tensor: np.ndarray, *, count: int | None = None) -> Pending:
        """Start inference on `tensor`, which must be the buffer returned by `input()`; on a batched slot its
        first `count` rows (default: `batch`), and the outputs hold that many rows."""
        with self._lock:
            self._check_open()
            index = self._next
            if self._busy[index] or tensor is not self._input(index):
                raise UsageError(f"slot {self.name!r}: submit() takes the buffer returned by input()",
                                 hint="call slot.input(), fill that array in place, then submit it")
            self._counts[index] = self._count(count)
            self._take(index)
        return self._start(index, lambda release: self._submit_impl(index, release))

    def frame_buffer(self, width: int, height: int) -> np.ndarray:
        """A pinned HxWx3 uint8 array to decode the next raw frame into (slots that take frames): the next
        `submit_frame` of that very array copies nothing on the host. Valid until that submission."""
        with self._lock:
            self._check_open()
            if not self.takes_frames or self.batch is not None:
                raise UsageError(f"slot {self.name!r} of {self.engine.name} has no frame buffers",
                                 hint="check slot.takes_frames (and that the slot is not batched)")
            self._check_free(self._next)
            return self._frame_buffer(self._next, width, height)

    def _frame_buffer(self, index: int, width: int, height: int) -> np.ndarray:
        """The pinned frame buffer of ring position `index`: slots with `takes_frames`."""
        raise NotImplementedError

    def submit_frame(self, image: np.ndarray) -> tuple[Pending, Letterbox]:
        """Letterbox the raw BGR uint8 `image` into the next input on the slot itself and start inference;
        returns the pending result and the Letterbox (only where `takes_frames`)."""
        with self._lock:
            self._check_open()
            if not self.takes_frames:
                raise UsageError(f"slot {self.name!r} of {self.engine.name} does not take raw frames",
                                 hint="check slot.takes_frames; otherwise preprocess into slot.input() and submit()")
            index = self._next
            self._check_free(index)
            self._take(index)
        return self._start(index, lambda release: self._submit_frame_impl(index, image, release))

    def _count(self, count: int | None) -> int:
        if self.batch is None:
            if count is not None:
                raise UsageError(f"slot {self.name!r} is not batched: submit() takes no count",
                                 hint="create the slot with engine.create_slot(name, batch=N) to submit N images")
            return 0
        if count is None:
            return self.batch
        if not 1 <= count <= self.batch:
            raise UsageError(f"slot {self.name!r}: count must be 1 to {self.batch}, got {count}")
        return count

    def submit_frames(self, images: list[np.ndarray]) -> tuple[Pending, list[Letterbox]]:
        """A batched slot's `submit_frame`: letterbox raw BGR uint8 `images` into rows 0..n-1 of the next input
        and start inference on them; returns the pending result and a Letterbox per image."""
        with self._lock:
            self._check_open()
            if not self.takes_frames or self.batch is None:
                raise UsageError(f"slot {self.name!r} of {self.engine.name} does not take batches of raw frames",
                                 hint="check slot.takes_frames and slot.batch; otherwise preprocess into slot.input()"
                                      " and submit(buf, count=n)")
            index = self._next
            self._check_free(index)
            self._counts[index] = self._count(len(images))
            self._take(index)
        return self._start(index, lambda release: self._submit_frames_impl(index, images, release))

    def submit_device_frame(self, frame: DeviceFrame) -> tuple[Pending, Letterbox]:
        """`submit_frame` of a frame in device memory, read in place (only where `takes_device_frames`, unbatched).
        The slot takes over the caller's reference: it releases the frame once, also when it raises."""
        pending, boxes = self._device_submission([frame], batched=False)
        return pending, boxes[0]

    def submit_device_frames(self, frames: list[DeviceFrame]) -> tuple[Pending, list[Letterbox]]:
        """A batched slot's `submit_device_frame`: rows 0..n-1 of the next input; every frame released once."""
        return self._device_submission(frames, batched=True)

    def _device_submission(self, frames: list[DeviceFrame], *, batched: bool) -> tuple[Pending, list[Letterbox]]:
        try:
            with self._lock:
                self._check_open()
                if not self.takes_device_frames or (self.batch is not None) != batched:
                    raise UsageError(f"slot {self.name!r} of {self.engine.name} does not take"
                                     f" {'batches of ' if batched else ''}device frames",
                                     note=self.device_frames_refused if not self.takes_device_frames else
                                     f"the slot is {'not ' if self.batch is None else ''}batched",
                                     hint="check slot.takes_device_frames and slot.batch; otherwise read the frame"
                                          " with frame.download_bgr()")
                index = self._next
                self._check_free(index)
                self._counts[index] = self._count(len(frames) if batched else None)
                self._take(index)
        except BaseException:
            for frame in frames:
                frame.release(None)
            raise
        return self._start(index, lambda release: self._submit_device_frames_impl(index, frames, release))

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._busy)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close_impl()
        self.engine._forget(self)

    def _take(self, index: int) -> None:
        self._busy[index] = True
        self._next = (index + 1) % self.depth

    def _start(self, index: int, start: Callable[[Callable[[], None]], _Started]) -> _Started:
        """Run a backend's submission; one that raises gives its buffer back (the backend first makes sure
        nothing it enqueued still uses it)."""
        release = lambda: self._free(index)  # noqa: E731
        try:
            return start(release)
        except BaseException:
            release()
            raise

    def _free(self, index: int) -> None:
        with self._lock:
            self._busy[index] = False

    def _check_free(self, index: int) -> None:
        if self._busy[index]:
            raise UsageError(f"slot {self.name!r}: all {self.depth} input buffers are in flight",
                             hint="wait() for the oldest pending result before taking another buffer")

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"slot {self.name!r} is closed")


class Engine(abc.ABC):
    """One model variant on one backend. `activate()` loads it; `deactivate()` frees it and its slots."""

    backend = "base"
    batch_hint = "give the task a model that takes a batch of {n} images"

    def __init__(self, path: str | Path, *, precision: str = "fp32") -> None:
        self.path = Path(path)
        self.precision = precision
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
        self.batch_sizes = BatchSizes(1, 1)          # read from the model by activate()
        self.is_active = False
        self._slots: list[Slot] = []

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.backend}:{self.precision}"

    def activate(self) -> Engine:
        if self.is_active:
            log.warning("%s | already active; not activating again", self.name)
            return self
        self._check_file()
        self._activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if not self.is_active:
            return
        for slot in list(self._slots):
            slot.close()
        self._deactivate_impl()
        self.is_active = False

    def create_slot(self, name: str, *, depth: int = 2, batch: int | None = None) -> Slot:
        """A slot with `depth` submissions in flight; with `batch`, each of up to `batch` images."""
        if not self.is_active:
            raise UsageError(f"engine {self.name}: create_slot() before activate()",
                             hint="use `with engine:` or call engine.activate() first")
        if batch is None:
            slot = self._create_slot_impl(name, depth)
        else:
            if batch < 1 or not self.batch_sizes.takes(batch):
                raise batch_error(self, batch, f"slot {name!r}")
            slot = self._create_batch_slot_impl(name, depth, batch)
        self._slots.append(slot)
        return slot

    def warmup(self) -> None:
        """Run one inference on a zero input so the first real frame does not pay for lazy initialisation."""
        slot = self.create_slot("warmup", depth=1)
        try:
            slot.submit(slot.input()).wait()
        finally:
            slot.close()

    def _forget(self, slot: Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise EngineError(f"model file does not exist: {self.path}",
                              hint="check the task's model path; `edge assets fetch` builds the demo model")
        if self.path.stat().st_size == 0:
            raise EngineError(f"model file is empty: {self.path}",
                              hint="the file was truncated (interrupted copy?); fetch or build it again")

    def __enter__(self) -> Engine:
        return self.activate()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()

    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def _create_slot_impl(self, name: str, depth: int) -> Slot: ...

    def _create_batch_slot_impl(self, name: str, depth: int, batch: int) -> Slot:
        raise EngineError(f"{self.name}: the {self.backend} backend does not run batched slots",
                          hint="set batch: false on the task (one lane per camera)")
