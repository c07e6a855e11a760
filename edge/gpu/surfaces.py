"""Device frames: a bounded pool of frame surfaces in device memory (or mapped pinned host memory, where one
copy in is all a Jetson needs) that a decoder writes and engines read in place, without a host copy.

A reader acquires a surface, writes a frame into it, records the frame's `ready` event and hands out
`surface.frame(...)`, a DeviceFrame holding one reference. Each further reader retains it; each release names
the stream whose work enqueued so far still reads it. The surface goes back to the pool once every reference
was released and the events recorded at those releases completed: reuse is ordered by CUDA events, never by
host sleeps. A reader that closes while the lanes still hold frames retires its pool: freed once they came back.
The lifecycle and its rules: docs/gpu.md section 1.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.errors import UsageError
from edge.gpu import cuda
from edge.gpu.kernels import PIXEL_FORMATS
from edge.letterbox import FrameError
from edge.log import get_logger

log = get_logger("surfaces")

RETIRE_S = 10.0                 # a retired pool is freed once its frames came back, or after this


def plane_shapes(pixel_format: str, width: int, height: int) -> list[tuple[int, ...]]:
    """The host array shape of each plane of a frame: (rows, columns[, channels]); FrameError for a bad one."""
    if pixel_format not in PIXEL_FORMATS:
        raise FrameError(f"unknown pixel format {pixel_format!r}", note=f"known: {', '.join(PIXEL_FORMATS)}",
                         hint="a decoder's frames are nv12, or bgr/bgrx/rgba after a colour converter")
    if width < 1 or height < 1:
        raise FrameError("a device frame needs a positive size", note=f"width {width}, height {height}")
    if pixel_format == "nv12":
        return [(height, width), (math.ceil(height / 2), 2 * math.ceil(width / 2))]
    return [(height, width, PIXEL_FORMATS[pixel_format].bytes_per_pixel)]


class SurfacePool:
    """`count` frame surfaces of `nbytes` each: device memory, or with `mapped` pinned host memory mapped into
    the device (a Jetson's frames are copied in once, then read in place). Thread-safe: one reader acquires,
    any lane releases. Free it once, from any thread; it retains the primary context for its own calls."""

    def __init__(self, nbytes: int, count: int, *, mapped: bool = False) -> None:
        if nbytes < 1 or count < 1:
            raise UsageError("a surface pool needs a positive size and count", note=f"nbytes {nbytes}, count {count}",
                             hint="size it from the stream (pitch * rows of every plane);"
                                  " count >= the readers' in_flight + 2")
        self.nbytes = nbytes
        self.mapped = mapped
        self._changed = threading.Condition()
        self._idle: list[Surface] = []          # released surfaces, oldest release first (their events may run)
        self._spare_events: list[Any] = []
        self._surfaces: list[Surface] = []
        self._stream: Any = None                # for download_bgr, with its pinned staging buffer
        self._staging: Any = None
        self._download_lock = threading.Lock()
        self._freed = False
        self._context = cuda.Context()
        try:
            with self._context.current():
                for _ in range(count):
                    if mapped:
                        buffer: Any = cuda.HostBuffer((nbytes,), np.uint8, mapped=True)
                        surface = Surface(self, buffer, buffer.device_pointer(), buffer.array)
                    else:
                        buffer = cuda.DeviceBuffer(nbytes)
                        surface = Surface(self, buffer, buffer.pointer, None)
                    self._surfaces.append(surface)
                    self._idle.append(surface)
                self._stream = cuda.Stream()
        except BaseException:
            self.free()
            raise

    @property
    def count(self) -> int:
        return len(self._surfaces)

    def acquire(self, timeout: float | None) -> Surface | None:
        """A surface to write the next frame into, none of whose readers still reads it; None after `timeout` s
        (None: wait as long as it takes) while every surface is out or still read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._changed:
                self._check_open("acquire")
                pending = None                  # an unfinished event of the oldest release, to wait on
                with self._context.current():
                    for surface in self._idle:  # each event queried once: one ending meanwhile is seen next time
                        unfinished = next((event for event in surface._pending if not event.query()), None)
                        if unfinished is None:
                            self._idle.remove(surface)
                            surface._recycle()
                            return surface
                        pending = pending or unfinished
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if pending is None:
                    if not self._changed.wait(remaining) and remaining is not None:
                        return None
                    continue
            with self._context.current():
                if not pending.wait(remaining):
                    return None

    def free(self) -> None:
        """Free every surface, event and stream; once (a second call does nothing). Frames still out become
        unreadable (their release does nothing more); work already enqueued on them finishes first."""
        with self._changed:
            if self._freed:
                return
            self._freed = True
            self._changed.notify_all()
        with self._download_lock, self._context.current():
            try:
                if any(surface._frame is not None or not all(event.query() for event in surface._pending)
                       for surface in self._surfaces):
                    self._context.synchronize()         # readers may still read a surface: let them finish first
            finally:
                owned = [thing for surface in self._surfaces for thing in (surface._buffer, surface._ready)]
                owned += [event for surface in self._surfaces for event in surface._pending] + self._spare_events
                owned += [self._staging, self._stream]
                for thing in owned:
                    if thing is not None:
                        thing.free()
        self._context.detach()

    def retire(self, what: str) -> None:
        """Free the pool once every surface came back (each frame released by all its readers), or after RETIRE_S
        seconds, logged: a frame still held then is unreadable, not read from freed memory. For a reader's close,
        which must not wait for the lanes: freed now where every surface is back and the readers' work on it ran,
        else by a thread of its own, through `free` (which lets the readers' work finish first). `what` names the
        reader in the log."""
        deadline = time.monotonic() + RETIRE_S
        with self._changed:
            if self._freed:
                return
            with self._context.current():
                settled = len(self._idle) == self.count and all(
                    event.query() for surface in self._surfaces for event in surface._pending)
        if settled:
            self.free()
        else:
            threading.Thread(target=self._retire, args=(deadline, what), name="surfaces-retire", daemon=True).start()

    def _retire(self, deadline: float, what: str) -> None:
        with self._changed:
            while len(self._idle) < self.count and not self._freed and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            if self._freed:                     # its owner freed it meanwhile
                return
            held = self.count - len(self._idle)
        if held:
            log.warning("%s: %d of its %d frame surfaces still held %.0f s after it closed; freed all the same",
                        what, held, self.count, RETIRE_S)
        self.free()

    def _check_open(self, what: str) -> None:
        if self._freed:
            raise UsageError(f"{what} on a freed surface pool", hint="free the pool after its reader stopped")

    def _released(self, surface: Surface, stream: Any) -> None:
        """One reference of the surface's frame went away; `stream`'s work so far may still read it."""
        if stream is not None:
            with self._context.current():
                event = self._spare_events.pop() if self._spare_events else cuda.Event()
                try:
                    event.record(stream)
                except BaseException:
                    self._spare_events.append(event)
                    raise
            surface._pending.append(event)

    def _download(self, frame: DeviceFrame, nbytes: int) -> np.ndarray:
        """The first `nbytes` of the frame's surface on the host, once the frame's writer finished."""
        with self._download_lock:
            self._check_open("download_bgr")
            with self._context.current():
                surface = frame._surface
                if self.mapped:
                    if frame._ready is not None:
                        frame._ready.wait(None)
                    return surface.host[:nbytes].copy()
                if self._staging is None:
                    self._staging = cuda.HostBuffer((self.nbytes,), np.uint8)
                if frame._ready is not None:
                    self._stream.wait(frame._ready)
                staged = self._staging.array[:nbytes]
                surface._buffer.download(staged, self._stream)
                self._stream.synchronize()
                return staged.copy()


class Surface:
    """One buffer of a pool: `pointer` is its device address, `host` its host view where mapped (else None).
    The writer that acquired it writes a frame, then hands it out with `frame(...)`."""

    def __init__(self, pool: SurfacePool, buffer: Any, pointer: int, host: np.ndarray | None) -> None:
        self.pointer = int(pointer)
        self.host = host
        self._pool = pool
        self._buffer = buffer
        self._frame: DeviceFrame | None = None
        self._pending: list[Any] = []           # events recorded at releases of the last frame
        self._acquired = False
        self._ready: Any = None

    def ready_event(self) -> Any:
        """This surface's own event for its frames' `ready`, for a writer that writes on a stream: record it after
        the writes. One serves every frame of the surface (it holds one frame at a time); it is made at first use
        and freed with the pool, so a lane may still wait on it after the writer closed."""
        if self._ready is None:
            with self._pool._context.current():
                self._ready = cuda.Event()
        return self._ready

    def frame(self, *, pixel_format: str, width: int, height: int, pitch: int, plane_offsets: Sequence[int],
              matrix: str, full_range: bool, ready: Any) -> DeviceFrame:
        """The frame written into this surface (planes at `plane_offsets` bytes from `pointer`, rows `pitch`
        bytes apart), holding one reference; `ready` was recorded after the writes (None: already written)."""
        if not self._acquired:
            raise UsageError("Surface.frame() on a surface that is not acquired",
                             note="a surface hands out one frame per acquire",
                             hint="acquire a surface from the pool for each frame")
        shapes = plane_shapes(pixel_format, width, height)
        offsets = tuple(int(offset) for offset in plane_offsets)
        if len(offsets) != len(shapes):
            raise FrameError(f"a {pixel_format} frame has {len(shapes)} plane(s)", note=f"got offsets {offsets}")
        row_bytes = max(shape[1] * (shape[2] if len(shape) == 3 else 1) for shape in shapes)
        if pitch < row_bytes:
            raise FrameError(f"pitch {pitch} bytes is shorter than a row", note=f"{width}x{height} {pixel_format}"
                             f" needs {row_bytes} bytes a row", hint="pass the decoder's pitch (stride) in bytes")
        end = max(offset + shape[0] * pitch for offset, shape in zip(offsets, shapes))
        if min(offsets) < 0 or end > self._pool.nbytes:
            raise FrameError("the frame's planes do not fit its surface", note=f"offsets {offsets}, pitch {pitch},"
                             f" {width}x{height} {pixel_format}: {end} bytes, surface {self._pool.nbytes} bytes",
                             hint="size the pool from the stream's pitch and rows of every plane")
        self._acquired = False
        self._frame = DeviceFrame(self, tuple(self.pointer + offset for offset in offsets), int(pitch), pixel_format,
                                  int(width), int(height), matrix, bool(full_range), ready, end)
        return self._frame

    def _recycle(self) -> None:
        """Taken from the pool: its events completed and go back to the pool's spares."""
        self._pool._spare_events.extend(self._pending)
        self._pending = []
        self._acquired = True


class DeviceFrame:
    """One frame in a surface, read in place by any number of readers (its fields: see `Surface.frame`).

    It starts with one reference (its producer's); `retain` adds a reader, `release(stream)` ends one. Reading
    a field after the last release, or releasing more often than retained, is a UsageError."""

    __slots__ = ("_surface", "_planes", "_pitch", "_pixel_format", "_width", "_height", "_matrix", "_full_range",
                 "_ready", "_nbytes", "_references")

    def __init__(self, surface: Surface, planes: tuple[int, ...], pitch: int, pixel_format: str, width: int,
                 height: int, matrix: str, full_range: bool, ready: Any, nbytes: int) -> None:
        self._surface = surface
        self._planes = planes
        self._pitch = pitch
        self._pixel_format = pixel_format
        self._width = width
        self._height = height
        self._matrix = matrix
        self._full_range = full_range
        self._ready = ready
        self._nbytes = nbytes
        self._references = 1

    def _read(self, field: str) -> Any:
        if self._references <= 0:
            raise UsageError(f"DeviceFrame.{field} read after the frame was released",
                             note=f"{self._width}x{self._height} {self._pixel_format} at {self._surface.pointer:#x}",
                             hint="retain() the frame before handing it to another reader; release it last")
        if self._surface._pool._freed:
            raise UsageError(f"DeviceFrame.{field} read after its surface pool was freed",
                             hint="stop the readers of a camera before its pool is freed")
        return getattr(self, "_" + field)

    planes = property(lambda self: self._read("planes"))
    pitch = property(lambda self: self._read("pitch"))
    pixel_format = property(lambda self: self._read("pixel_format"))
    width = property(lambda self: self._read("width"))
    height = property(lambda self: self._read("height"))
    matrix = property(lambda self: self._read("matrix"))
    full_range = property(lambda self: self._read("full_range"))
    ready = property(lambda self: self._read("ready"))

    @property
    def released(self) -> bool:
        """True once every reference was released."""
        return self._references <= 0

    def retain(self) -> None:
        """One more reader: it calls `release` once when done."""
        with self._surface._pool._changed:
            self._read("planes")
            self._references += 1

    def release(self, stream: Any) -> None:
        """This reader is done once the work it enqueued on `stream` so far has run (None: it enqueued nothing
        that reads the frame, or waited for it). The surface goes back after the last release's events."""
        pool = self._surface._pool
        with pool._changed:
            if self._references <= 0:
                raise UsageError("DeviceFrame released more often than retained",
                                 note=f"{self._width}x{self._height} {self._pixel_format} at"
                                      f" {self._surface.pointer:#x}", hint="each reader releases its frame once")
            if pool._freed:
                self._references -= 1
                return
            pool._released(self._surface, stream)
            self._references -= 1
            if self._references == 0:
                self._surface._frame = None
                pool._idle.append(self._surface)
                pool._changed.notify_all()

    def download_bgr(self) -> np.ndarray:
        """A host HxWx3 uint8 BGR copy of the frame, for an engine on the CPU (costly: a copy and a conversion).
        The caller still releases the frame, with None (the copy is done when this returns)."""
        self._read("planes")
        from edge.gpu.letterbox import to_bgr

        host = self._surface._pool._download(self, self._nbytes)
        planes = []
        for pointer, shape in zip(self._planes, plane_shapes(self._pixel_format, self._width, self._height)):
            offset = pointer - self._surface.pointer
            rows = host[offset:offset + shape[0] * self._pitch].reshape(shape[0], self._pitch)
            planes.append(rows[:, :int(np.prod(shape[1:]))].reshape(shape))
        return to_bgr(planes, self._pixel_format, matrix=self._matrix, full_range=self._full_range)
