"""ONNX Runtime backend: one shared session, one worker thread per slot (ORT releases the GIL)."""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.backends.base import Engine, Pending, Slot, TensorSpec
from edge.errors import EngineError

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
           "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError("ONNX Runtime backend requested but `import onnxruntime` failed", note=str(exc),
                          hint="pip install onnxruntime (or onnxruntime-gpu where CUDA is installed)") from exc
    return onnxruntime


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise EngineError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_DTYPES[arg.type]))


class OrtPending(Pending):
    def __init__(self, future: concurrent.futures.Future[list[np.ndarray]], names: list[str],
                 release: Callable[[], None], engine: str) -> None:
        super().__init__(release)
        self._future = future
        self._names = names
        self._engine = engine

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        try:
            values = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise EngineError(f"{self._engine}: inference did not finish within {timeout} s") from None
        except Exception as exc:  # ORT raises its own RuntimeError subclasses from the worker
            raise EngineError(f"{self._engine}: inference failed: {exc}") from exc
        return dict(zip(self._names, values))


class OrtSlot(Slot):
    engine: OnnxRuntimeEngine

    def __init__(self, engine: OnnxRuntimeEngine, name: str, depth: int) -> None:
        super().__init__(engine, name, depth)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")

    def _alloc_input(self) -> np.ndarray:
        spec = self.engine.inputs[0]
        return np.zeros(spec.shape, spec.dtype)

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        feed = {self.engine.inputs[0].name: self._buffers[index]}
        future = self._worker.submit(self.engine.session.run, None, feed)
        return OrtPending(future, [o.name for o in self.engine.outputs], release, self.engine.name)

    def _close_impl(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


class OnnxRuntimeEngine(Engine):
    """ONNX model on ONNX Runtime. CPU by default; pass providers to use e.g. the CUDA EP."""

    backend = "onnxruntime"

    def __init__(self, path: Any, *, precision: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        super().__init__(path, precision=precision)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.session: Any = None

    def _activate_impl(self) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        # No busy-waiting between runs: at camera rate the spinning pool burned a second core for nothing
        # (benchmarks/cpu_pipeline.py at 10 fps: 101 -> 65 ms CPU per frame).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises InvalidProtobuf/Fail/InvalidGraph/NoSuchFile, all RuntimeError-like
            raise EngineError(f"ONNX Runtime cannot load {self.path}", note=str(exc).strip()[:500],
                              hint="the file is corrupt or not an ONNX model; rebuild it (`edge assets fetch`"
                                   " for the demo model)") from exc
        if len(self.session.get_inputs()) != 1:
            names = [i.name for i in self.session.get_inputs()]
            raise EngineError(f"{self.path} has {len(names)} inputs {names}; edge tasks feed exactly one image tensor")
        self.inputs = [_spec(self.session.get_inputs()[0])]
        if -1 in self.inputs[0].shape:
            raise EngineError(f"{self.path}: input {self.inputs[0].name} has a dynamic shape {self.inputs[0].shape}",
                              hint="export the model with a fixed input shape, e.g. 1x3x416x416")
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _deactivate_impl(self) -> None:
        self.session = None

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        return OrtSlot(self, name, depth)
