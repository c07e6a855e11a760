"""A stand-in for edge.gpu.cuda where there is no GPU, for the TensorRT backend's contract tests.

It keeps a ledger of what is held (the context, streams, events, pinned and device buffers, kernels),
so tests can check that every allocation is freed, on close and on every failure path, and that each
one is made and freed with the context current (pycuda's rule). Memory is numpy: a device buffer or a
mapped host buffer has a pointer the stand-in TensorRT's compute can copy between (`install` routes
tests/fake_tensorrt.device_copy here), and copies run at once (`copy_device` also from and to an offset
inside a buffer, as the NVDEC reader copies a frame; `Ledger.region` reads such bytes). Events finish when
recorded, unless the ledger `hold`s them: then they stay unfinished until `finish()` (or a synchronize of their
stream), and a host wait on one without a timeout fails the test instead of hanging; `query()` answers without
waiting, and a context's `synchronize()` finishes everything. `trace` lists what was enqueued on which stream, in order;
`launches` each kernel launch with its arguments. The device's INTEGRATED and CAN_MAP_HOST_MEMORY attributes
are settable.

CUDA graphs: edge.gpu.cuda.Graph itself runs, on a stand-in of the part of cuda-bindings' `cuda.bindings.driver`
it calls (the only cuda-bindings module the stand-in has: `cuda.bindings.runtime` cannot be imported). It
follows the bindings' conventions (cuda-bindings 12.9.10, cuda/bindings/driver.pyx, the same in 13.x): each
call returns a tuple, (CUresult,) or (CUresult, handle), the handle None after an error. While a stream
captures, the work enqueued on it is kept, not run (as CUDA's stream capture does); a launch of the
instantiated graph runs it again, and a captured copy reads its host buffer at launch. `fail_capture` makes
the next captures end as CUDA ends one that work which cannot be captured invalidated (after the callable
ran): cuStreamEndCapture returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph.
"""
from __future__ import annotations

import contextlib
import enum
import itertools
import sys
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.errors import EngineError

ledger: Ledger


class Ledger:
    def __init__(self) -> None:
        self.live: dict[int, str] = {}          # id -> kind of everything held now
        self.allocations = 0                    # made so far
        self.fail_at: int | None = None         # the allocation (1-based count) that fails, like cuMemAlloc
        self.current = 0                        # depth of context.current() blocks
        self.hold = False
        self.integrated = False
        self.can_map = True
        self.trace: list[tuple[Any, ...]] = []
        self.launches: list[tuple[str, int, tuple[Any, ...]]] = []     # (function, stream handle, arguments)
        self.memory: dict[int, np.ndarray] = {}
        self.fail_capture = False
        self.captures = 0                       # graphs instantiated so far
        self.capture_modes: list[CUstreamCaptureMode] = []     # the mode of each capture begun
        self._capturing: tuple[int, list[Callable[[], None]]] | None = None    # (stream handle, kept work)
        self._unfinished: list[Event] = []
        self._handles = itertools.count(1)

    def take(self, thing: Any, kind: str, *, current: bool = True) -> None:
        if current:
            self._check_current(f"allocating a {kind}")
        self.allocations += 1
        if self.allocations == self.fail_at:
            raise MemoryError(f"cuMemAlloc failed: out of memory (stand-in, allocation {self.allocations}: {kind})")
        self.live[id(thing)] = kind

    def keep(self, thing: Any, kind: str) -> None:
        """Hold a CUDA graph object: made by a call that returns a CUresult, so `fail_at` does not fail it."""
        self._check_current(f"making a {kind}")
        self.live[id(thing)] = kind

    def give(self, thing: Any, *, current: bool = True) -> None:
        if current:
            self._check_current("freeing")
        if id(thing) not in self.live:
            raise AssertionError(f"{type(thing).__name__} freed twice, or never allocated")
        del self.live[id(thing)]

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.live.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def finish(self) -> None:
        """Everything enqueued so far has run."""
        for event in self._unfinished:
            event.complete = True
        self._unfinished.clear()

    def enqueue(self, entry: tuple[Any, ...], work: Callable[[], None]) -> None:
        """Run `work` now (and trace it), or keep it for the graph being captured on its stream."""
        if self._capturing is not None and self._capturing[0] == entry[1]:
            self._capturing[1].append(work)
            return
        self.trace.append(entry)
        work()

    def copy(self, dst: int, src: int, nbytes: int, stream_handle: int) -> bool:
        def work() -> None:
            self.memory[dst][:nbytes] = self.memory[src][:nbytes]

        self.enqueue(("compute", stream_handle), work)
        return True

    def handle(self) -> int:
        return next(self._handles)

    def region(self, pointer: int, nbytes: int) -> np.ndarray:
        """The `nbytes` of stand-in device memory at `pointer`, inside one buffer; AssertionError past its end."""
        for base, memory in self.memory.items():
            if base <= pointer and pointer + nbytes <= base + memory.size:
                return memory[pointer - base:pointer - base + nbytes]
        raise AssertionError(f"{nbytes} bytes at {pointer:#x} are not inside one device buffer")

    def _check_current(self, what: str) -> None:
        if self.current <= 0:
            raise AssertionError(f"{what} without the CUDA context current")


def _bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


class Context:
    """The primary context, retained by an owner (the ledger holds it until `detach`)."""

    def __init__(self, device: int = 0) -> None:
        ledger.take(self, "context", current=False)
        self._detached = False
        self.handle = ledger.handle()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        ledger.current += 1
        try:
            yield
        finally:
            ledger.current -= 1

    def synchronize(self) -> None:
        ledger._check_current("synchronizing the context")
        ledger.trace.append(("synchronize context",))
        ledger.finish()

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            ledger.give(self, current=False)


class Stream:
    def __init__(self) -> None:
        ledger.take(self, "stream")
        self.handle = ledger.handle()

    @property
    def raw(self) -> Stream:
        return self

    def synchronize(self) -> None:
        ledger.trace.append(("synchronize", self.handle))
        for event in ledger._unfinished:
            if event.stream is self:
                event.complete = True
        ledger._unfinished[:] = [e for e in ledger._unfinished if not e.complete]

    def wait(self, event: Event) -> None:
        ledger.trace.append(("wait", self.handle, event))

    def free(self) -> None:
        ledger.give(self)


class Event:
    def __init__(self) -> None:
        ledger.take(self, "event")
        self.stream: Stream | None = None
        self.complete = True

    def record(self, stream: Stream) -> None:
        ledger.trace.append(("record", stream.handle, self))
        self.stream = stream
        self.complete = not ledger.hold
        if ledger.hold:
            ledger._unfinished.append(self)

    def query(self) -> bool:
        return self.complete

    def wait(self, timeout: float | None) -> bool:
        if not self.complete and timeout is None:
            raise AssertionError("the host would wait forever for work the test holds back")
        return self.complete

    def free(self) -> None:
        ledger.give(self)


class HostBuffer:
    def __init__(self, shape: tuple[int, ...], dtype: Any, *, mapped: bool = False) -> None:
        ledger.take(self, "mapped host buffer" if mapped else "host buffer")
        self.array: Any = np.zeros(shape, dtype)
        self.mapped = mapped
        if mapped:
            ledger.memory[self.array.ctypes.data] = _bytes(self.array)

    def device_pointer(self) -> int:
        if not self.mapped:
            raise EngineError("device_pointer() needs a mapped host buffer (mapped=True)")
        return int(self.array.ctypes.data)

    def free(self) -> None:
        if self.array is not None:
            ledger.give(self)
            self.array = None


class DeviceBuffer:
    def __init__(self, nbytes: int = 0) -> None:
        self._bytes: np.ndarray | None = None
        self.nbytes = 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> DeviceBuffer:
        if nbytes > self.nbytes or self._bytes is None:
            self.free()
            ledger.take(self, "device buffer")
            self._bytes = np.zeros(max(1, nbytes), np.uint8)
            self.nbytes = max(1, nbytes)
            ledger.memory[self.pointer] = self._bytes
        return self

    @property
    def pointer(self) -> int:
        return int(self._bytes.ctypes.data)

    def upload(self, host: np.ndarray, stream: Stream) -> None:
        device = self._bytes

        def work() -> None:
            device[:host.nbytes] = _bytes(host)

        ledger.enqueue(("h2d", stream.handle, self.pointer), work)

    def download(self, host: np.ndarray, stream: Stream) -> None:
        device = self._bytes

        def work() -> None:
            _bytes(host)[:] = device[:host.nbytes]

        ledger.enqueue(("d2h", stream.handle, self.pointer), work)

    def free(self) -> None:
        if self._bytes is not None:
            ledger.give(self)
            self._bytes = None
            self.nbytes = 0


def copy_device(destination: int, source: int, nbytes: int, stream: Stream) -> None:
    """Copies between the stand-in's buffers, at any offset into them (a plane of a frame)."""
    def work() -> None:
        ledger.region(destination, nbytes)[:] = ledger.region(source, nbytes)

    ledger.enqueue(("d2d", stream.handle, destination), work)


class Kernel:
    """Loads nothing and computes nothing: GpuLetterbox's kernel runs on the GPU tier."""

    def __init__(self, function: str, signature: str, cubin: Any) -> None:
        ledger.take(self, "kernel")
        self.function = function

    def launch(self, grid: tuple[int, int], block: tuple[int, int, int], stream: Stream, *args: Any) -> None:
        ledger.launches.append((self.function, stream.handle, args))
        ledger.enqueue(("kernel", stream.handle, int(args[1])), lambda: None)

    def free(self) -> None:
        ledger.give(self)


# --- cuda.bindings.driver: the calls edge.gpu.cuda.Graph makes -----------------------------------------------------
# Signatures, return tuples and values as cuda-bindings 12.9.10 has them (cuda/bindings/driver.pyx: def
# cuStreamBeginCapture(hStream, mode), cuStreamEndCapture(hStream), cuGraphInstantiate(hGraph, unsigned long long
# flags) (CUDA 12's cuGraphInstantiateWithFlags), cuGraphLaunch(hGraphExec, hStream), cuGraphExecDestroy(hGraphExec),
# cuGraphDestroy(hGraph); class CUresult, class CUstreamCaptureMode); the rules of capture are those of the CUDA
# Driver API reference (cuStreamBeginCapture: not on a stream that already captures; cuStreamEndCapture: "If capture
# was invalidated, due to a violation of the rules of stream capture, then a NULL graph will be returned").

class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_ILLEGAL_STATE = 401
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901


class CUstreamCaptureMode(enum.IntEnum):
    CU_STREAM_CAPTURE_MODE_GLOBAL = 0
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
    CU_STREAM_CAPTURE_MODE_RELAXED = 2


class CUgraph:
    """A captured graph: the work kept while its stream captured."""

    def __init__(self, work: list[Callable[[], None]]) -> None:
        self.work = work


class CUgraphExec:
    """An executable graph, instantiated from a CUgraph (which may then be destroyed)."""

    def __init__(self, work: list[Callable[[], None]]) -> None:
        self.work = list(work)


def _live(handle: Any, kind: type) -> bool:
    return isinstance(handle, kind) and id(handle) in ledger.live


def cuStreamBeginCapture(hStream: Any, mode: Any) -> tuple[CUresult]:
    ledger._check_current("capturing a CUDA graph")
    stream = int(hStream)
    if ledger._capturing is not None:
        if ledger._capturing[0] == stream:
            return (CUresult.CUDA_ERROR_ILLEGAL_STATE,)
        raise AssertionError("the stand-in keeps one capture at a time")
    ledger.capture_modes.append(CUstreamCaptureMode(int(mode)))
    ledger._capturing = (stream, [])
    return (CUresult.CUDA_SUCCESS,)


def cuStreamEndCapture(hStream: Any) -> tuple[CUresult, CUgraph | None]:
    if ledger._capturing is None or ledger._capturing[0] != int(hStream):
        return (CUresult.CUDA_ERROR_ILLEGAL_STATE, None)
    _, work = ledger._capturing
    ledger._capturing = None
    if ledger.fail_capture:
        return (CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, None)
    graph = CUgraph(work)
    ledger.keep(graph, "captured graph")
    return (CUresult.CUDA_SUCCESS, graph)


def cuGraphInstantiate(hGraph: Any, flags: int) -> tuple[CUresult, CUgraphExec | None]:
    if not isinstance(flags, int):
        raise TypeError("an integer is required")             # Cython's unsigned long long argument
    if not _live(hGraph, CUgraph):
        return (CUresult.CUDA_ERROR_INVALID_VALUE, None)
    executable = CUgraphExec(hGraph.work)
    ledger.keep(executable, "graph")
    ledger.captures += 1
    return (CUresult.CUDA_SUCCESS, executable)


def cuGraphLaunch(hGraphExec: Any, hStream: Any) -> tuple[CUresult]:
    ledger._check_current("launching a CUDA graph")
    if not _live(hGraphExec, CUgraphExec):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    ledger.trace.append(("graph", int(hStream)))
    for work in hGraphExec.work:
        work()
    return (CUresult.CUDA_SUCCESS,)


def cuGraphExecDestroy(hGraphExec: Any) -> tuple[CUresult]:
    if not _live(hGraphExec, CUgraphExec):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    ledger.give(hGraphExec)
    return (CUresult.CUDA_SUCCESS,)


def cuGraphDestroy(hGraph: Any) -> tuple[CUresult]:
    if not _live(hGraph, CUgraph):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    ledger.give(hGraph)
    return (CUresult.CUDA_SUCCESS,)


def _module(name: str, **attributes: Any) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attributes)
    return module


DRIVER_API = _module("cuda.bindings.driver", **{name: globals()[name] for name in (
    "CUresult", "CUstreamCaptureMode", "CUgraph", "CUgraphExec", "cuStreamBeginCapture", "cuStreamEndCapture",
    "cuGraphInstantiate", "cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy")})


class _Device:
    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal

    def get_attribute(self, attribute: str) -> int:
        return int({"INTEGRATED": ledger.integrated, "CAN_MAP_HOST_MEMORY": ledger.can_map}[attribute])

    def compute_capability(self) -> tuple[int, int]:
        return 8, 7


_DRIVER = SimpleNamespace(Device=_Device, device_attribute=SimpleNamespace(
    INTEGRATED="INTEGRATED", CAN_MAP_HOST_MEMORY="CAN_MAP_HOST_MEMORY"))


def install(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """Put the stand-in in place of edge.gpu.cuda's classes, of cuda-bindings (its driver API only) and of the
    stand-in TensorRT's compute, for one test; the ledger already in place when it is."""
    global ledger
    from edge.gpu import cuda

    if cuda.Stream is Stream:
        return ledger
    ledger = Ledger()
    monkeypatch.setattr("edge.gpu.cuda.driver", lambda: _DRIVER)
    for name in ("Context", "Stream", "Event", "HostBuffer", "DeviceBuffer", "Kernel", "copy_device"):
        monkeypatch.setattr(f"edge.gpu.cuda.{name}", globals()[name])
    bindings = _module("cuda.bindings", __path__=[], driver=DRIVER_API)          # packages, as cuda-bindings has
    for name, module in (("cuda", _module("cuda", __path__=[], bindings=bindings)), ("cuda.bindings", bindings),
                         ("cuda.bindings.driver", DRIVER_API), ("cuda.bindings.runtime", None)):
        monkeypatch.setitem(sys.modules, name, module)        # None: importing cuda.bindings.runtime fails
    monkeypatch.setattr("tests.support.fake_tensorrt.device_copy", ledger.copy)
    return ledger
