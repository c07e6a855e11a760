"""TensorRT backend (TensorRT 10/11 name-based API), with pycuda through edge.cuda.

One runtime and engine per task variant; per slot (camera) one IExecutionContext, one CUDA
stream, and for each of the K frames in flight its own pinned host and device buffers, so
frame n+1 is uploaded and enqueued while frame n still runs. A plan whose sidecar says it was
built for another device, or that TensorRT warns about ("different models of devices"), is
refused: plans are rebuilt on the target, never silently used elsewhere.

A plan built for a DLA core runs on that core (set on the runtime before deserializing). A
dynamic-shape plan gives each slot an optimization profile of its own: TensorRT requires one per
execution context in concurrent use, so such a plan runs as many slots as it has profiles.
"""
from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge import bundle, cuda
from edge.backends.base import Engine, Pending, Slot, TensorSpec
from edge.bundle import DeviceKey
from edge.errors import EngineError

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
    return DeviceKey(bundle.read_board(), bundle.read_l4t(), str(tensorrt.__version__), cuda.compute_capability())


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
    def __init__(self, slot: TrtSlot, index: int, release: Callable[[], None]) -> None:
        super().__init__(release)
        self._slot = slot
        self._index = index

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        with self._slot.engine.context.current():
            if not self._slot.events[self._index].wait(timeout):
                raise EngineError(f"{self._slot.engine.name}: inference did not finish within {timeout} s")
        return {name: host.array.copy() for name, host in self._slot.outputs[self._index].items()}


class TrtSlot(Slot):
    engine: TensorRTEngine

    def __init__(self, engine: TensorRTEngine, name: str, depth: int) -> None:
        self._hosts: list[cuda.HostBuffer] = []
        spec = engine.inputs[0]
        with engine.context.current(), contextlib.ExitStack() as undo:
            self.profile = engine.take_profile(name)
            undo.callback(engine.give_profile, self.profile)
            self.stream = cuda.Stream()
            undo.callback(self.stream.free)
            self.execution = open_execution(engine.engine, engine.logger, spec, self.profile, self.stream.handle,
                                            f"{engine.name} slot {name}")
            undo.callback(delattr, self, "execution")       # before its profile goes back
            super().__init__(engine, name, depth)
            self.device_inputs = [cuda.DeviceBuffer(int(np.prod(spec.shape)) * spec.dtype.itemsize)
                                  for _ in range(depth)]
            self.outputs = [{o.name: cuda.HostBuffer(o.shape, o.dtype) for o in engine.outputs} for _ in range(depth)]
            self.device_outputs = [{o.name: cuda.DeviceBuffer(int(np.prod(o.shape)) * o.dtype.itemsize)
                                    for o in engine.outputs} for _ in range(depth)]
            self.events = [cuda.Event() for _ in range(depth)]
            undo.pop_all()

    def _alloc_input(self) -> np.ndarray:
        spec = self.engine.inputs[0]
        host = cuda.HostBuffer(spec.shape, spec.dtype)
        self._hosts.append(host)
        return host.array

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        spec = self.engine.inputs[0]
        with self.engine.context.current():
            self.device_inputs[index].upload(self._buffers[index], self.stream)
            self.execution.set_tensor_address(spec.name, self.device_inputs[index].pointer)
            for name, buffer in self.device_outputs[index].items():
                self.execution.set_tensor_address(name, buffer.pointer)
            if not self.execution.execute_async_v3(self.stream.handle):
                release()
                raise EngineError(f"{self.engine.name}: execute_async_v3 failed on slot {self.name}")
            for name, buffer in self.device_outputs[index].items():
                buffer.download(self.outputs[index][name].array, self.stream)
            self.events[index].record(self.stream)
        return TrtPending(self, index, release)

    def _close_impl(self) -> None:
        with self.engine.context.current():
            self.stream.synchronize()
            for buffer in self.device_inputs + [b for d in self.device_outputs for b in d.values()]:
                buffer.free()
            for host in self._hosts + [h for d in self.outputs for h in d.values()]:
                host.free()
            for event in self.events:
                event.free()
            self.stream.free()
            del self.execution
        self.engine.give_profile(self.profile)


class TensorRTEngine(Engine):
    """A TensorRT plan built by `edge build` (its sidecar JSON holds the device key and the model metadata)."""

    backend = "tensorrt"

    def __init__(self, path: Any, *, precision: str = "fp32", device: int = 0) -> None:
        super().__init__(path, precision=precision)
        self.device = device
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
        self.logger = make_logger(trt)
        self.context = cuda.Context(self.device)
        try:
            with self.context.current():
                self._load(trt, sidecar.get("dla_core"), dict(built.input_shapes))
        except Exception:
            self.runtime = self.engine = None
            self.context.detach()
            raise

    def _load(self, trt: Any, dla_core: int | None, built_shapes: dict[str, tuple[int, ...]]) -> None:
        self.runtime = trt.Runtime(self.logger)
        set_dla_core(self.runtime, dla_core, self.path)
        self.engine = deserialize(trt, self.runtime, self.path.read_bytes(), self.logger, self.path)
        self.inputs, self.outputs = io_specs(trt, self.engine, self.path, built_shapes, self.logger)
        dynamic = any(-1 in tuple(self.engine.get_tensor_shape(spec.name)) for spec in self.inputs)
        self._free_profiles = list(range(self.engine.num_optimization_profiles)) if dynamic else None

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
