"""The TensorRT backend's Engine: a plan built by `edge build` for this device (plan.py loads it), run by one
TrtSlot per camera (slot.py). A plan built for a DLA core runs on that core. A dynamic-shape plan gives each
slot an optimization profile of its own: TensorRT requires one per execution context in concurrent use, so
such a plan runs as many slots as it has profiles. A plan whose input has a dynamic first dimension takes the
batches its profile allows (min to max), a static one exactly its first dimension.
"""
from __future__ import annotations

import threading
from typing import Any

from edge.engines.base import BatchSizes, Engine, LetterboxPreprocessing, Preprocessing, Slot
from edge.engines.repository import DeviceKey
from edge.engines.tensorrt.plan import (
    deserialize,
    device_key,
    import_tensorrt,
    io_specs,
    make_logger,
    read_sidecar,
    set_dla_core,
)
from edge.engines.tensorrt.slot import COPY_MODES, TrtSlot, choose_copy_mode, frames_unfit, rows_of
from edge.errors import EngineError, UsageError
from edge.gpu import cuda
from edge.log import get_logger

log = get_logger("engine")


class TensorRTEngine(Engine):
    """A TensorRT plan built by `edge build` (its sidecar JSON holds the device key and the model metadata)."""

    backend = "tensorrt"
    batch_hint = ("build the plan from an ONNX model with a dynamic batch dimension, with a profile that reaches"
                  " batch {n}: edge build model.onnx --shapes images:1x3x416x416,4x3x416x416,8x3x416x416"
                  " (MIN,OPT,MAX), or from a model with a fixed batch of {n}")

    def __init__(self, path: Any, *, precision: str = "fp32", device: int = 0, copy_mode: str = "auto",
                 preprocessing: Preprocessing | None = None, cuda_graph: bool | str = False) -> None:
        super().__init__(path, precision=precision)
        if copy_mode not in COPY_MODES:
            raise UsageError(f"copy_mode {copy_mode!r} is not one of {', '.join(COPY_MODES)}")
        if cuda_graph not in (True, False, "auto") or not isinstance(cuda_graph, (bool, str)):
            raise UsageError(f"cuda_graph {cuda_graph!r} is not one of true, false, auto")
        if preprocessing is not None and not isinstance(preprocessing, LetterboxPreprocessing):
            raise EngineError(f"{self.path.name}: the TensorRT backend cannot run the preprocessing the task names,"
                              f" {preprocessing!r}", note="its slots run a LetterboxPreprocessing, nothing else",
                              hint="teach edge/engines/tensorrt/frames.py this preprocessing, or run the task on"
                                   " ONNX Runtime (backend: onnxruntime)")
        self.device = device
        self.requested_copy_mode = copy_mode
        self.copy_mode = "copy"                           # resolved by activate()
        self.preprocessing: LetterboxPreprocessing | None = preprocessing   # None: the task's own, on the CPU
        self.cuda_graph = cuda_graph                      # static-shape unbatched slots run CUDA graphs (auto)
        self.takes_frames = False                         # slots letterbox raw frames on the GPU (activate())
        self.rows_take_frames = False                     # batched slots do, one image per row (activate())
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
        self.copy_mode, why = choose_copy_mode(self.requested_copy_mode, self.device)
        self.logger = make_logger(trt)
        self.context = cuda.Context(self.device)
        try:
            with self.context.current():
                self._load(trt, sidecar.get("dla_core"), dict(built.input_shapes))
        except Exception:
            self.runtime = self.engine = None
            self.context.detach()
            raise
        unfit = frames_unfit(self.preprocessing, self.inputs[0])
        self.takes_frames = unfit is None
        self.rows_take_frames = frames_unfit(self.preprocessing, rows_of(self.inputs[0], 1)) is None
        log.info("%s | copy mode %s (%s); preprocessing on the %s", self.name, self.copy_mode, why,
                 "GPU" if unfit is None else f"CPU: {unfit}")

    def _load(self, trt: Any, dla_core: int | None, built_shapes: dict[str, tuple[int, ...]]) -> None:
        self.runtime = trt.Runtime(self.logger)
        set_dla_core(self.runtime, dla_core, self.path)
        self.engine = deserialize(trt, self.runtime, self.path.read_bytes(), self.logger, self.path)
        self.inputs, self.outputs = io_specs(trt, self.engine, self.path, built_shapes, self.logger)
        dynamic = any(-1 in tuple(self.engine.get_tensor_shape(spec.name)) for spec in self.inputs)
        self._free_profiles = list(range(self.engine.num_optimization_profiles)) if dynamic else None
        self.batch_sizes = self._batch_sizes()

    def _batch_sizes(self) -> BatchSizes:
        """The batches the plan runs: its profile's range of a dynamic first dimension, else that dimension."""
        spec = self.inputs[0]
        if not spec.shape:
            return BatchSizes(1, 1)
        if int(self.engine.get_tensor_shape(spec.name)[0]) != -1:
            return BatchSizes(spec.shape[0], spec.shape[0])
        low, _, high = self.engine.get_tensor_profile_shape(spec.name, 0)
        return BatchSizes(int(low[0]), int(high[0]))

    @property
    def dynamic(self) -> bool:
        """Whether the plan has a dynamic-shape input (its slots each take an optimization profile)."""
        return self._free_profiles is not None

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
                                       " profile per camera (edge build --shapes ... --profiles N)")
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

    def _create_batch_slot_impl(self, name: str, depth: int, batch: int) -> Slot:
        return TrtSlot(self, name, depth, batch)
