"""A stand-in for the `tensorrt` Python module (TensorRT 10.x name-based API), for contract tests.

TensorRT exists only on the Jetson. This module follows NVIDIA's documented Python API for the
calls edge makes (Builder, OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache,
IProgressMonitor, Runtime, ICudaEngine, IExecutionContext, ILogger) and documented behaviour:
deserialize_cuda_engine returns None on failure and logs an error; a plan from another device
model deserializes with a warning about "different models of devices"; build_serialized_network
returns None on failure; DLA without GPU_FALLBACK fails for layers the DLA cannot run.

Its "network" copies the start of the input tensor into every output (so GPU tests can check
the buffers and streams): execute_async_v3 does that with cuMemcpyDtoDAsync on the given raw
stream when cuda-bindings is installed, and returns False when an address was not set.
"""
from __future__ import annotations

import enum
import json
from typing import Any

import numpy as np

__version__ = "10.3.0.30"
BOARD = "NVIDIA Jetson AGX Orin Developer Kit"     # the device this stand-in pretends to run on
MAGIC = b"FAKEPLAN"
DLA_UNSUPPORTED = {"Resize"}                        # layers this stand-in's DLA cannot run


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: ILogger.Severity = ILogger.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        pass


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


def nptype(dtype: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
            DataType.INT32: np.int32}[dtype]


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 5


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.ops: set[str] = set()

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class _ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node -1 (parseGraph): INVALID_GRAPH: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network = network
        self.logger = logger
        self.errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]

    def parse(self, model: bytes) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # noqa: BLE001 - the real parser reports any protobuf failure as an error
            self.errors.append(_ParserError(f"Failed to parse ONNX model: {exc}"))
            return False
        dims = lambda t: tuple(d.dim_value if d.dim_value else -1 for d in t.type.tensor_type.shape.dim)  # noqa
        self.network.inputs = [ITensor(t.name, dims(t)) for t in proto.graph.input]
        self.network.outputs = [ITensor(t.name, dims(t)) for t in proto.graph.output]
        self.network.ops = {n.op_type for n in proto.graph.node}
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, entries: list[str]) -> None:
        self.entries = entries

    def serialize(self) -> bytes:
        return b"FAKECACHE" + json.dumps(self.entries).encode()


class IBuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized: bytes) -> ITimingCache:
        if not serialized:
            return ITimingCache([])
        if not serialized.startswith(b"FAKECACHE"):
            raise RuntimeError("ITimingCache: invalid serialized timing cache")
        return ITimingCache(json.loads(serialized[len(b"FAKECACHE"):]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class IHostMemory(bytes):
    pass


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
        if config.default_device_type == DeviceType.DLA and network.ops & DLA_UNSUPPORTED and \
                BuilderFlag.GPU_FALLBACK not in config.flags:
            self.logger.log(ILogger.ERROR, "DLA does not support Resize and GPU fallback is not enabled")
            return None
        for name, tensor in ((t.name, t) for t in network.inputs):
            if -1 in tensor.shape and not any(name in p.shapes for p in config.profiles):
                self.logger.log(ILogger.ERROR, f"Network has dynamic input {name} but no optimization profile")
                return None
        profile = {t.name: [list(s) for s in p.shapes[t.name]] for p in config.profiles for t in network.inputs
                   if t.name in p.shapes}
        io = [{"name": t.name, "mode": "INPUT", "shape": list(t.shape)} for t in network.inputs]
        io += [{"name": t.name, "mode": "OUTPUT", "shape": list(t.shape)} for t in network.outputs]
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"tactics for {len(network.ops)} op types")
        if monitor is not None:
            monitor.phase_finish("Building engine")
        return IHostMemory(MAGIC + json.dumps({"board": BOARD, "io": io, "profile": profile}).encode())


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(shape)
        declared = self.engine.get_tensor_shape(name)
        low, _, high = self.engine.profile.get(name, (declared, declared, declared))
        ok = len(shape) == len(declared) and all(
            (d == -1 and lo <= s <= hi) or d == s for d, s, lo, hi in zip(declared, shape, low, high))
        if ok:
            self.input_shapes[name] = shape
        else:
            self.engine.logger.log(ILogger.ERROR, f"IExecutionContext::setInputShape: {name} {shape} is outside"
                                                  f" the optimization profile [{low}, {high}]")
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """Inputs: the shape set; outputs: their declared shape with a dynamic batch taken from the input."""
        if name in self.input_shapes:
            return self.input_shapes[name]
        shape = self.engine.get_tensor_shape(name)
        batch = next(iter(self.input_shapes.values()), (-1,))[0]
        return tuple(batch if d == -1 and i == 0 else d for i, d in enumerate(shape))

    def execute_async_v3(self, stream_handle: int) -> bool:
        if set(self.addresses) != {t["name"] for t in self.engine.io}:
            self.engine.logger.log(ILogger.ERROR, "IExecutionContext::enqueueV3: tensor address not set")
            return False
        shapes = {t["name"]: self.get_tensor_shape(t["name"]) for t in self.engine.io}
        if any(-1 in s for s in shapes.values()):
            self.engine.logger.log(ILogger.ERROR, "IExecutionContext::enqueueV3: input shape not specified")
            return False
        from cuda.bindings import driver

        source = next(t["name"] for t in self.engine.io if t["mode"] == "INPUT")
        size = lambda name: int(np.prod(shapes[name])) * 4  # noqa: E731
        for out in (t["name"] for t in self.engine.io if t["mode"] == "OUTPUT"):
            err, = driver.cuMemcpyDtoDAsync(self.addresses[out], self.addresses[source],
                                            min(size(out), size(source)), stream_handle)
            if err != driver.CUresult.CUDA_SUCCESS:
                return False
        return True


class ICudaEngine:
    def __init__(self, io: list[dict[str, Any]], profile: dict[str, Any], logger: ILogger) -> None:
        self.io = io
        self.profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in profile.items()}
        self.logger = logger

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index]["name"]

    def _tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in self.io if t["name"] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensor(name)["mode"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> tuple[tuple[int, ...], ...]:
        return self.profile[name]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized: bytes) -> ICudaEngine | None:
        if not serialized.startswith(MAGIC):
            self.logger.log(ILogger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization"
                                           " (Serialization assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG"
                                           " failed.)")
            return None
        try:
            plan = json.loads(serialized[len(MAGIC):])
        except ValueError:
            self.logger.log(ILogger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (corrupt)")
            return None
        if plan["board"] != BOARD:
            self.logger.log(ILogger.WARNING, "Using an engine plan file across different models of devices is not"
                                             " recommended and is likely to affect performance or even cause errors.")
        return ICudaEngine(plan["io"], plan.get("profile", {}), self.logger)
