"""The only module that imports pycuda: the device's primary context (pushed and popped by each
thread that uses it; never pycuda.autoinit), streams, events, pinned host and device buffers; and CUDA
graphs, through cuda-bindings' driver API (cuda.bindings.driver) on pycuda's stream handles (pycuda has no
capture API): it needs only libcuda.so.1, the driver library pycuda uses, never the CUDA runtime.

Rules (docs/gpu.md section 6): retaining the primary context does not make it current; every thread
pushes it around its CUDA calls and pops it after; buffers are freed explicitly while the context is
current, never left to the garbage collector.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge.errors import EngineError, UsageError

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


def integrated(device: int = 0) -> bool:
    """True for a GPU that shares the host's memory (a Jetson's iGPU): the device's INTEGRATED attribute."""
    cuda = driver()
    return bool(cuda.Device(device).get_attribute(cuda.device_attribute.INTEGRATED))


def can_map_host_memory(device: int = 0) -> bool:
    """True where pinned host memory can be mapped into the device (zero-copy): CAN_MAP_HOST_MEMORY."""
    cuda = driver()
    return bool(cuda.Device(device).get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY))


@functools.cache
def _libcuda() -> Any:
    return ctypes.CDLL("libcuda.so.1")          # the driver library pycuda itself is linked against


def _pop_current() -> None:
    """cuCtxPopCurrent through the driver library: pycuda has no call that pops a context it no longer tracks."""
    popped = ctypes.c_void_p()
    result = _libcuda().cuCtxPopCurrent_v2(ctypes.byref(popped))
    if result != 0:
        raise EngineError(f"cuCtxPopCurrent failed after releasing the primary context (CUresult {result})")


class Context:
    """The primary context of one device, retained once per owner (an engine, a build) of this process.

    pycuda releases a retained primary context cleanly only while it is current: `detach()` from a thread
    where it is not current pushes it and never pops it (one stale entry on that thread's context stack per
    detach), and from a thread other than the one that retained it releases nothing at all. While it is
    current pycuda releases it from any thread, but still leaves the driver's stack entry behind (its own
    Context.pop() then fails: 'cannot pop non-current context'). So `detach` makes the context current,
    releases it, and pops that entry through the driver (docs/gpu.md section 6 says where this was seen).
    """

    def __init__(self, device: int = 0) -> None:
        cuda = driver()
        self._cuda = cuda
        self.device = cuda.Device(device)
        self._context = self.device.retain_primary_context()
        self._detached = False

    @property
    def handle(self) -> int:
        """The raw CUcontext, for a library that takes one (PyNvVideoCodec's decoder)."""
        return int(self._context.handle)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the context current in this thread for the block."""
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def synchronize(self) -> None:
        """Wait (host) until all work enqueued in this context has run; call it with the context current."""
        self._cuda.Context.synchronize()

    def detach(self) -> None:
        """Release this owner's hold on the context, once, from any thread; not inside a `current()` block."""
        if self._detached:
            return
        if self._cuda.Context.get_current() is not None:
            raise UsageError("Context.detach() while a CUDA context is current in this thread",
                             hint="detach after leaving every `with context.current():` block")
        self._detached = True
        self._context.push()
        self._context.detach()
        _pop_current()


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

    def wait(self, event: Event) -> None:
        """Work enqueued on this stream from now on starts after the work before `event` (no host wait)."""
        self._stream.wait_for_event(event.raw)

    def free(self) -> None:
        """Destroy the stream now, while the context is current (pycuda cannot clean it up later)."""
        self._stream = None


class Event:
    """A synchronization event: record on a stream, then wait for it. `timing=True` for `elapsed_ms` (timing
    makes the event a little slower to record, so it is off by default)."""

    def __init__(self, *, timing: bool = False) -> None:
        cuda = driver()
        self._event = cuda.Event(0 if timing else cuda.event_flags.DISABLE_TIMING)

    def elapsed_ms(self, start: Event) -> float:
        """GPU time from `start` to this event; both recorded with timing=True and completed."""
        return float(self._event.time_since(start.raw))

    @property
    def raw(self) -> Any:
        return self._event

    def free(self) -> None:
        """Destroy the event now, while the context is current."""
        self._event = None

    def record(self, stream: Stream) -> None:
        self._event.record(stream.raw)

    def query(self) -> bool:
        """True when the work before the event finished (or it was never recorded); never blocks (cuEventQuery)."""
        return bool(self._event.query())

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
        """Unpin and release the memory now, while the context is current; a second call does nothing."""
        if self.array is not None:
            self.array.base.free()
            self.array = None


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


def copy_device(destination: int, source: int, nbytes: int, stream: Stream) -> None:
    """Enqueue a copy of `nbytes` between device addresses on `stream` (cuMemcpyDtoDAsync); returns at once."""
    driver().memcpy_dtod_async(destination, source, nbytes, stream.raw)


class Kernel:
    """One __global__ function, loaded into the current context from the cubin `cubin(arch=..., refresh=...)`
    returns for this device's SM (edge/gpu/nvrtc.py compiles and caches it); `free()` unloads it while the
    context is current. `signature` is pycuda's prepared-call format (P pointer, i int, d double, f float)."""

    def __init__(self, function: str, signature: str, cubin: Callable[..., bytes]) -> None:
        cuda = driver()
        major, minor = cuda.Context.get_device().compute_capability()
        arch = f"sm_{major}{minor}"
        binary = cubin(arch=arch)
        try:
            self._module = cuda.module_from_buffer(binary)
        except cuda.Error:                          # a damaged cache file, or a cubin this driver refuses
            self._module = cuda.module_from_buffer(cubin(arch=arch, refresh=True))
        self._function = self._module.get_function(function)
        self._function.prepare(signature)

    def launch(self, grid: tuple[int, int], block: tuple[int, int, int], stream: Stream, *args: Any) -> None:
        """Enqueue on `stream`; returns at once."""
        self._function.prepared_async_call(grid, block, stream.raw, *args)

    def free(self) -> None:
        """Unload the module now, while the context is current."""
        self._function = None
        self._module = None


GRAPH_HINT = ("set cuda_graph: false for this task; on a Jetson scripts/setup.sh installs cuda-bindings of the board's"
              " CUDA major version (pip install 'cuda-bindings==12.*' on JetPack 6, '==13.*' on JetPack 7)")


def _driver_api() -> Any:
    """cuda.bindings.driver; EngineError where cuda-bindings (or its cuda-pathfinder) is missing.

    Its calls return tuples, (CUresult,) or (CUresult, handle), with None for the handle after an error; it
    opens libcuda.so.1 on its first call (cuda-bindings 12.9.10: cuda/bindings/_internal/driver_linux.pyx,
    through cuda.pathfinder, which finds the copy pycuda already loaded). Unlike the runtime, the driver
    API keeps no last error to clear after a failed call."""
    try:
        from cuda.bindings import driver as api
    except ImportError as exc:
        raise EngineError("CUDA graphs need cuda-bindings, and `import cuda.bindings.driver` failed",
                          note=str(exc), hint=GRAPH_HINT) from exc
    return api


def graph_support() -> str | None:
    """None where CUDA graphs can be captured here (cuda-bindings' driver API imports), else why not."""
    try:
        _driver_api()
    except EngineError as exc:
        return exc.summary()
    return None


class Graph:
    """An executable CUDA graph of the work one callable enqueues on a stream, launched with one call.

    `Graph.capture(stream, enqueue)` captures what `enqueue()` puts on `stream` (and on streams it joins
    through events) in thread-local mode, as trtexec does: other threads' CUDA calls go on as usual. The
    graph bakes in every address and kernel argument, and a captured host-to-device copy reads its host
    buffer when the graph runs. Run the same work once without capture first (TensorRT allocates on its
    first enqueue), and synchronize. Capture and launch with the context current; `free()` likewise."""

    def __init__(self, api: Any, executable: Any) -> None:
        self._api = api
        self._executable = executable

    @classmethod
    def capture(cls, stream: Stream, enqueue: Callable[[], None]) -> Graph:
        """The graph of `enqueue()` on `stream`; EngineError (capture ended) where CUDA or the enqueued work
        refuses capture. An exception from `enqueue` ends the capture and propagates."""
        api = _driver_api()
        success = api.CUresult.CUDA_SUCCESS
        error, = api.cuStreamBeginCapture(stream.handle, api.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        if error != success:
            raise EngineError(f"CUDA refused to start a graph capture: {error.name}", hint=GRAPH_HINT)
        try:
            enqueue()
        except BaseException:
            _, graph = api.cuStreamEndCapture(stream.handle)
            if graph is not None:
                api.cuGraphDestroy(graph)
            raise
        error, graph = api.cuStreamEndCapture(stream.handle)
        if error != success:                        # an invalidated capture returns no graph
            raise EngineError(f"CUDA graph capture failed: {error.name}",
                              note="some work enqueued during capture cannot run in a graph", hint=GRAPH_HINT)
        try:
            error, executable = api.cuGraphInstantiate(graph, 0)
        finally:
            api.cuGraphDestroy(graph)
        if error != success:
            raise EngineError(f"CUDA could not instantiate the captured graph: {error.name}", hint=GRAPH_HINT)
        return cls(api, executable)

    def launch(self, stream: Stream) -> None:
        """Enqueue the whole graph on `stream`; returns at once."""
        error, = self._api.cuGraphLaunch(self._executable, stream.handle)
        if error != self._api.CUresult.CUDA_SUCCESS:
            raise EngineError(f"cuGraphLaunch failed: {error.name}", hint=GRAPH_HINT)

    def free(self) -> None:
        """Destroy the executable graph now, while the context is current; a second call does nothing."""
        if self._executable is not None:
            self._api.cuGraphExecDestroy(self._executable)
            self._executable = None
