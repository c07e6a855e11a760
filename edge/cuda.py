"""The only module that imports pycuda: the device's primary context (pushed and popped by each
thread that uses it; never pycuda.autoinit), streams, events, pinned host and device buffers.

Rules (../reference notes, tested on an H100): retaining the primary context does not make it
current; every thread pushes it around its CUDA calls and pops it after; buffers are freed
explicitly while the context is current, never left to the garbage collector.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from edge.errors import EngineError

_init_lock = threading.Lock()
_initialised = False


def driver() -> Any:
    """pycuda.driver, initialised once; EngineError when pycuda or the driver is missing."""
    global _initialised
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise EngineError("CUDA needed but `import pycuda.driver` failed", note=str(exc),
                          hint="on a Jetson: pip install 'edge[jetson]' (pycuda builds against JetPack's CUDA)"
                          ) from exc
    with _init_lock:
        if not _initialised:
            try:
                cuda.init()
            except cuda.Error as exc:
                raise EngineError(f"CUDA driver initialisation failed: {exc}",
                                  hint="check the NVIDIA driver and that /dev/nvidia* or /dev/nvhost-* are accessible"
                                       " (group video)") from exc
            _initialised = True
    return cuda


def compute_capability(device: int = 0) -> str:
    major, minor = driver().Device(device).compute_capability()
    return f"{major}.{minor}"


class Context:
    """The primary context of one device, shared by every owner of this process."""

    def __init__(self, device: int = 0) -> None:
        cuda = driver()
        self._cuda = cuda
        self.device = cuda.Device(device)
        self._context = self.device.retain_primary_context()
        self._detached = False

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the context current in this thread for the block."""
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            self._context.detach()


class Stream:
    """A non-blocking CUDA stream; `handle` is the raw cudaStream_t for TensorRT."""

    def __init__(self) -> None:
        self._stream = driver().Stream(flags=1)     # CU_STREAM_NON_BLOCKING

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def free(self) -> None:
        """Destroy the stream now, while the context is current (pycuda cannot clean it up later)."""
        self._stream = None


class Event:
    """A synchronization event (no timing): record on a stream, then wait for it."""

    def __init__(self) -> None:
        cuda = driver()
        self._event = cuda.Event(cuda.event_flags.DISABLE_TIMING)

    def free(self) -> None:
        """Destroy the event now, while the context is current."""
        self._event = None

    def record(self, stream: Stream) -> None:
        self._event.record(stream.raw)

    def wait(self, timeout: float | None) -> bool:
        """True when the work before the event finished; False after `timeout` s."""
        if timeout is None:
            self._event.synchronize()
            return True
        deadline = time.monotonic() + timeout
        while not self._event.query():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0002)
        return True


class HostBuffer:
    """Page-locked host memory (a numpy array); `mapped` also maps it into the device (zero-copy)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, *, mapped: bool = False) -> None:
        cuda = driver()
        flags = cuda.host_alloc_flags.DEVICEMAP if mapped else 0
        self.array = cuda.pagelocked_empty(shape, dtype, mem_flags=flags)
        self.mapped = mapped

    def device_pointer(self) -> int:
        if not self.mapped:
            raise EngineError("device_pointer() needs a mapped host buffer (mapped=True)")
        return int(self.array.base.get_device_pointer())

    def free(self) -> None:
        self.array.base.free()


class DeviceBuffer:
    """Device memory that only grows: `ensure(nbytes)` reallocates when more is needed."""

    def __init__(self, nbytes: int = 0) -> None:
        self._cuda = driver()
        self._alloc = None
        self.nbytes = 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> DeviceBuffer:
        if nbytes > self.nbytes or self._alloc is None:
            self.free()
            self._alloc = self._cuda.mem_alloc(max(1, nbytes))
            self.nbytes = max(1, nbytes)
        return self

    @property
    def pointer(self) -> int:
        return int(self._alloc)

    def upload(self, host: np.ndarray, stream: Stream) -> None:
        self._cuda.memcpy_htod_async(self._alloc, host, stream.raw)

    def download(self, host: np.ndarray, stream: Stream) -> None:
        self._cuda.memcpy_dtoh_async(host, self._alloc, stream.raw)

    def free(self) -> None:
        if self._alloc is not None:
            self._alloc.free()
            self._alloc = None
            self.nbytes = 0
