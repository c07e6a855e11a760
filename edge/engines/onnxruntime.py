"""ONNX Runtime backend: one shared session, one worker thread per slot (ORT releases the GIL).

A model whose input has a symbolic (or -1) first dimension takes any batch: it runs batch 1 on a plain
slot and up to N images on a batched slot (`create_slot(name, batch=N)`); a fixed first dimension N
takes exactly N images (a batched slot pads a smaller batch)."""
from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.engines.base import BatchSizes, Engine, Pending, Slot, TensorSpec, WaitTimeout
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


def session_options(threads: int | None = None, *, spinning: bool = False, int8_precise: bool | None = None) -> Any:
    """The ONNX Runtime session options of every session edge creates: the runtime's, the INT8 gate's,
    the FP16 check's and the benchmarks'. So a variant is always judged exactly as it will run.
    `int8_precise` None decides by the probe below (benchmarks force it to show what it costs)."""
    ort = _import_ort()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not spinning:
        # No busy-waiting between runs: at camera rate the spinning pool burned a second core for nothing
        # (benchmarks/cpu_pipeline.py at 10 fps: 101 -> 65 ms CPU per frame).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if int8_saturates() if int8_precise is None else int8_precise:
        # ORT's x86 U8S8 kernels for SSE4.1/AVX2/AVX-512 without VNNI sum pairs of u8*s8 products in
        # int16 (vpmaddubsw), which saturates. On such a CPU the demo's INT8 variant was wrong (head
        # outputs off by 16.5, F1 0.35 against fp32). Precise mode makes ORT use its U8U8 kernels there.
        # It is set only where the probe below shows the saturation: on a VNNI CPU the results are
        # identical without it, and with it INT8 ran 2x slower (docs/int8-calibration.md has the figures).
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def cpu_facts() -> dict[str, Any]:
    """What decides INT8 speed and exactness on ONNX Runtime's CPU kernels, for benchmark records:
    the CPU model, its AVX2/AVX-512/VNNI flags (from /proc/cpuinfo), and whether edge runs INT8 in
    precise mode here."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp")
    return {"cpu": model, "flags": [f for f in wanted if f in flags],
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "int8_precise_mode": int8_saturates()}


_PROBE_CHANNELS = 64


@functools.cache
def int8_saturates() -> bool:
    """True when ONNX Runtime's default INT8 convolution saturates on this CPU.

    Asks the kernel itself rather than reading CPU flags (which an emulator or a VM may misreport):
    a QDQ 1x1 convolution over 64 channels whose every input and weight is the int8 maximum gives
    64.0 per output when exact; a kernel that adds u8*s8 pairs in int16 gives something else."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(_probe_model(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, _PROBE_CHANNELS, 4, 4), np.float32)})[0]
    return not np.array_equal(out, np.full_like(out, _PROBE_CHANNELS))


def _probe_model() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    n = _PROBE_CHANNELS
    values = {"w": np.full((8, n, 1, 1), 127, np.int8), "w_scale": np.full(8, 1 / 127, np.float32),
              "w_zero": np.zeros(8, np.int8), "x_scale": np.float32(1 / 127), "y_scale": np.float32(1.0),
              "zero": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "zero"], ["out"])]
    graph = helper.make_graph(nodes, "int8-saturation-probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise EngineError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_DTYPES[arg.type]))


class OrtPending(Pending):
    def __init__(self, future: concurrent.futures.Future[list[np.ndarray]], names: list[str],
                 release: Callable[[], None], engine: str, count: int = 0) -> None:
        super().__init__(release)
        self._future = future
        self._names = names
        self._engine = engine
        self._count = count             # a batched submission's images: the outputs' first rows

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        try:
            values = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise WaitTimeout(f"{self._engine}: inference did not finish within {timeout} s") from None
        except Exception as exc:  # ORT raises its own RuntimeError subclasses from the worker
            raise EngineError(f"{self._engine}: inference failed: {exc}") from exc
        outputs = dict(zip(self._names, values))
        return self._rows(outputs) if self._count else outputs

    def _rows(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] < self._count:
                raise EngineError(f"{self._engine}: output {name} has shape {list(value.shape)} for a batch of"
                                  f" {self._count} images: its first dimension is not the batch",
                                  hint="batch only models whose outputs keep the batch as their first dimension")
        return {name: value[:self._count] for name, value in outputs.items()}


class OrtSlot(Slot):
    engine: OnnxRuntimeEngine

    def __init__(self, engine: OnnxRuntimeEngine, name: str, depth: int, batch: int | None = None) -> None:
        super().__init__(engine, name, depth, batch)
        spec = engine.inputs[0]
        shape = spec.shape if self.rows is None else (self.rows, *spec.shape[1:])
        self._buffers = [np.zeros(shape, spec.dtype) for _ in range(depth)]
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")

    def _input(self, index: int) -> np.ndarray:
        return self._buffers[index]

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        tensor, count = self._buffers[index], self._counts[index]
        if count:                       # a batched submission runs its rows only (a fixed batch: all of them)
            tensor = tensor[:self.engine.batch_sizes.rows(count)]
        future = self._worker.submit(self.engine.session.run, None, {self.engine.inputs[0].name: tensor})
        return OrtPending(future, [o.name for o in self.engine.outputs], release, self.engine.name, count)

    def _close_impl(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


class OnnxRuntimeEngine(Engine):
    """ONNX model on ONNX Runtime. CPU by default; pass providers to use e.g. the CUDA EP."""

    backend = "onnxruntime"
    batch_hint = ("export the ONNX model with a dynamic batch dimension (a symbolic first dimension of its input and"
                  " outputs, e.g. torch.onnx.export(..., dynamic_axes={'images': {0: 'batch'}})) or with a fixed"
                  " batch of {n}")

    def __init__(self, path: Any, *, precision: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        super().__init__(path, precision=precision)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.session: Any = None

    def _activate_impl(self) -> None:
        ort = _import_ort()
        options = session_options(self.threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises InvalidProtobuf/Fail/InvalidGraph/NoSuchFile, all RuntimeError-like
            raise EngineError(f"ONNX Runtime cannot load {self.path}", note=str(exc).strip()[:500],
                              hint="the file is corrupt or not an ONNX model; rebuild it (`edge assets fetch`"
                                   " for the demo model)") from exc
        if len(self.session.get_inputs()) != 1:
            names = [i.name for i in self.session.get_inputs()]
            raise EngineError(f"{self.path} has {len(names)} inputs {names}; edge tasks feed exactly one image tensor")
        spec = _spec(self.session.get_inputs()[0])
        if -1 in spec.shape[1:] or not spec.shape:
            raise EngineError(f"{self.path}: input {spec.name} has a dynamic shape {spec.shape}",
                              hint="export the model with a fixed input shape, e.g. 1x3x416x416 (a dynamic batch"
                                   " dimension, the first, is fine)")
        outputs = [_spec(o) for o in self.session.get_outputs()]
        if spec.shape[0] == -1:         # a dynamic batch: batch 1 unless a slot asks for more
            self.batch_sizes = BatchSizes(1, None)
            spec, outputs = _batch_one(spec), [_batch_one(o) for o in outputs]
        else:
            self.batch_sizes = BatchSizes(spec.shape[0], spec.shape[0])
        self.inputs, self.outputs = [spec], outputs
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _deactivate_impl(self) -> None:
        self.session = None

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        return OrtSlot(self, name, depth)

    def _create_batch_slot_impl(self, name: str, depth: int, batch: int) -> Slot:
        return OrtSlot(self, name, depth, batch)


def _batch_one(spec: TensorSpec) -> TensorSpec:
    """`spec` with a dynamic first dimension set to 1: what a plain slot runs."""
    if not spec.shape or spec.shape[0] != -1:
        return spec
    return TensorSpec(spec.name, (1, *spec.shape[1:]), spec.dtype)
