"""Loading a TensorRT plan (TensorRT 10/11 name-based API): importing TensorRT, this device's plan key, the
capturing logger, deserializing (a plan built for another device is refused: plans are rebuilt on the target,
never silently used elsewhere), DLA cores, the IO specs, execution contexts and the sidecar JSON that
`edge build` writes beside each plan."""
from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge.engines import repository
from edge.engines.base import TensorSpec
from edge.engines.repository import DeviceKey
from edge.errors import EngineError
from edge.gpu import cuda

FOREIGN_PLAN_WARNING = "different models of devices"
INSTALL_HINT = ("TensorRT exists on the Jetson: install JetPack's python3-libnvinfer and create the venv with"
                " --system-site-packages (docs/gpu.md section 6 says which TensorRT comes from where). Elsewhere run"
                " the ONNX variant (allow_onnx: true)")
DLA_HINT = ("DLA exists on Jetson AGX Orin and Orin NX only, and not with every TensorRT: docs/gpu.md section 6"
            " lists the boards and versions that drive it")


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
    return DeviceKey(repository.read_board(), repository.read_l4t(), str(tensorrt.__version__),
                     cuda.compute_capability())


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
