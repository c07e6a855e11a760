"""The engine contract: an Engine per task variant creates one Slot per camera (or camera group).

A slot owns K host input buffers and its execution resources (CUDA streams, or a worker thread),
allocated by the backend's slot constructor. Use: `buf = slot.input()`, write the preprocessed frame
into `buf`, `pending = slot.submit(buf)`, later `outputs = pending.wait()`. A slot whose
`takes_frames` is true also preprocesses on its own: `pending, box = slot.submit_frame(image)` takes
the raw BGR uint8 frame and letterboxes it exactly as edge.preprocess.letterbox_into does (on the
GPU, for TensorRT), returning the Letterbox the postprocessing needs. Up to K submissions of either
kind are in flight; a buffer is reused only after its pending result was waited for.
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
    from edge.preprocess import Letterbox

log = get_logger("engine")
_Started = TypeVar("_Started")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]     # -1 marks a dynamic dimension
    dtype: np.dtype


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

    def __init__(self, engine: Engine, name: str, depth: int) -> None:
        if depth < 1:
            raise UsageError(f"slot {name!r}: depth must be at least 1, got {depth}")
        self.engine = engine
        self.name = name
        self.depth = depth
        self._lock = threading.Lock()
        self._busy = [False] * depth
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

    @abc.abstractmethod
    def _close_impl(self) -> None: ...

    def input(self) -> np.ndarray:
        """The host buffer the next `submit` will send; write the preprocessed tensor into it."""
        with self._lock:
            self._check_open()
            self._check_free(self._next)
            return self._input(self._next)

    def submit(self, tensor: np.ndarray) -> Pending:
        """Start inference on `tensor`, which must be the buffer returned by `input()`."""
        with self._lock:
            self._check_open()
            index = self._next
            if self._busy[index] or tensor is not self._input(index):
                raise UsageError(f"slot {self.name!r}: submit() takes the buffer returned by input()",
                                 hint="call slot.input(), fill that array in place, then submit it")
            self._take(index)
        return self._start(index, lambda release: self._submit_impl(index, release))

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

    def __init__(self, path: str | Path, *, precision: str = "fp32") -> None:
        self.path = Path(path)
        self.precision = precision
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
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

    def create_slot(self, name: str, *, depth: int = 2) -> Slot:
        if not self.is_active:
            raise UsageError(f"engine {self.name}: create_slot() before activate()",
                             hint="use `with engine:` or call engine.activate() first")
        slot = self._create_slot_impl(name, depth)
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
