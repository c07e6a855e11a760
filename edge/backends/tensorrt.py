"""TensorRT backend (TensorRT 10/11 name-based API), with pycuda through edge.cuda.

One runtime and engine per task variant; per slot (camera) one IExecutionContext, one CUDA
stream, and for each of the K frames in flight its own pinned host and device buffers, so
frame n+1 is uploaded and enqueued while frame n still runs. A plan whose sidecar says it was
built for another device, or that TensorRT warns about ("different models of devices"), is
refused: plans are rebuilt on the target, never silently used elsewhere.
"""
from __future__ import annotations

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


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError("TensorRT backend requested but `import tensorrt` failed", note=str(exc),
                          hint="TensorRT exists on the Jetson: install JetPack's python3-libnvinfer and create the"
                               " venv with --system-site-packages; elsewhere run the ONNX variant (allow_onnx: true)"
                          ) from exc
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


def io_specs(trt: Any, engine: Any, path: Path,
             built_shapes: dict[str, tuple[int, ...]]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """IO tensors with concrete shapes. A dynamic input runs at the shape the plan was built for (the
    profile's opt shape, recorded in the sidecar); output shapes then come from an execution context."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
    dtype = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
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
        context = engine.create_execution_context()
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
        with engine.context.current():
            super().__init__(engine, name, depth)
            self.stream = cuda.Stream()
            self.execution = engine.engine.create_execution_context()
            spec = engine.inputs[0]
            if not self.execution.set_input_shape(spec.name, spec.shape):
                raise EngineError(f"{engine.name}: TensorRT refused input shape {list(spec.shape)} for {spec.name}",
                                  note=engine.logger.text())
            self.device_inputs = [cuda.DeviceBuffer(int(np.prod(spec.shape)) * spec.dtype.itemsize)
                                  for _ in range(depth)]
            self.outputs = [{o.name: cuda.HostBuffer(o.shape, o.dtype) for o in engine.outputs} for _ in range(depth)]
            self.device_outputs = [{o.name: cuda.DeviceBuffer(int(np.prod(o.shape)) * o.dtype.itemsize)
                                    for o in engine.outputs} for _ in range(depth)]
            self.events = [cuda.Event() for _ in range(depth)]

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


class TensorRTEngine(Engine):
    """A TensorRT plan built by `edge build` (its sidecar JSON holds the device key and the model metadata)."""

    backend = "tensorrt"

    def __init__(self, path: Any, *, precision: str = "fp32", device: int = 0, dla_core: int | None = None) -> None:
        super().__init__(path, precision=precision)
        self.device = device
        self.dla_core = dla_core
        self.context: cuda.Context
        self.engine: Any = None

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
        self.context = cuda.Context(self.device)
        self.logger = make_logger(trt)
        with self.context.current():
            self.runtime = trt.Runtime(self.logger)
            if self.dla_core is not None:
                self.runtime.DLA_core = self.dla_core
            self.engine = deserialize(trt, self.runtime, self.path.read_bytes(), self.logger, self.path)
            self.inputs, self.outputs = io_specs(trt, self.engine, self.path, dict(built.input_shapes))

    def _deactivate_impl(self) -> None:
        with self.context.current():
            self.engine = None
            self.runtime = None
        self.context.detach()

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        return TrtSlot(self, name, depth)
