"""A stand-in for the `tensorrt` Python module (TensorRT 10.x name-based API), for contract tests.

TensorRT exists only on the Jetson. This module follows the Python bindings (NVIDIA/TensorRT
python/src/infer/pyCore.cpp, python/packaging/bindings_wheel/tensorrt/__init__.py) and the
headers (include/NvInfer.h, NvInferRuntime.h) for the calls edge makes, including how they fail:

- deserialize_cuda_engine, create_execution_context, create_timing_cache and
  build_serialized_network return None on failure and log an error; set_timing_cache and
  set_input_shape return False; set_optimization_profile_async raises RuntimeError (its
  binding turns False into an exception); nptype raises TypeError for a type numpy lacks;
- a Python subclass of ILogger or IProgressMonitor that does not call the base __init__ is a
  TypeError when instantiated (pybind11);
- enum values are the headers' (BuilderFlag.GPU_FALLBACK = 3; STRONGLY_TYPED = 1 in 10.x and
  0 in 11.x, see TENSORRT_11);
- a plan from another device model deserializes with a warning about "different models of
  devices"; a timing cache from another device is refused by set_timing_cache;
- Runtime.DLA_core does nothing where there is no DLA (DLA_CORES = 0), and a DLA plan runs on
  the runtime's DLA core, core 0 when none was set;
- the engine's IO types come from the ONNX graph (FLOAT16 inputs are HALF).

Two rules the headers state but real TensorRT does not always enforce are errors here, so tests
catch them: a dynamic-shape engine's live execution contexts must each hold their own optimization
profile (NvInferRuntime.h, IExecutionContext: "each execution context in concurrent use must use a
separate optimization profile"; TensorRT 7/8 logged "Profile 0 has been chosen by another
IExecutionContext"), and every execution context takes device memory, so create_execution_context
returns None once DEVICE_MEMORY is used up (as on an 8 GB Orin Nano).

Its "network" copies the start of the input tensor into every output (so GPU tests can check
the buffers and streams): execute_async_v3 does that with `device_copy` (cuMemcpyAsync on the
given raw stream, through cuda-bindings; CPU-tier tests replace it), and returns False when an
address was not set. With COMPUTE_NS > 0 each enqueue first runs a kernel that spins that long on
the stream: a slow engine, so tests can see what overlaps its compute.
"""
from __future__ import annotations

import ctypes
import enum
import json
import weakref
from typing import Any

import numpy as np

__version__ = "10.3.0.30"
BOARD = "NVIDIA Jetson AGX Orin Developer Kit"     # the device this stand-in pretends to run on
DLA_CORES = 2                                       # AGX Orin; Orin Nano and Thor have none
DEVICE_MEMORY = 8 << 30                             # what execution contexts may take, in bytes
CONTEXT_MEMORY = 64 << 20                           # what one execution context takes
MAGIC = b"FAKEPLAN"
CACHE_MAGIC = b"FAKECACHE"
DLA_UNSUPPORTED = {"Resize"}                        # layers this stand-in's DLA cannot run
COMPUTE_NS = 0                                      # > 0: each enqueue spins this long on the GPU first
SPIN_SOURCE = r"""
extern "C" __global__ void spin(unsigned long long ns)
{
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""


def device_copy(dst: int, src: int, nbytes: int, stream_handle: int) -> bool:
    """The stand-in network's compute: an async copy on the raw stream (cuMemcpyAsync: unified addressing
    tells device memory from mapped host memory, which a zerocopy slot hands the engine)."""
    from cuda.bindings import driver

    err, = driver.cuMemcpyAsync(dst, src, nbytes, stream_handle)
    return err == driver.CUresult.CUDA_SUCCESS


class _Spin:
    """A one-thread kernel that spins for a given time on a raw stream (libcuda through ctypes; loaded into
    the context current when the engine first runs, like an engine's own kernels)."""

    def __init__(self) -> None:
        from edge.gpu import cuda, nvrtc

        major, minor = cuda.driver().Context.get_device().compute_capability()
        self._lib = ctypes.CDLL("libcuda.so.1")
        self._lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
        self._cubin = nvrtc.cubin(SPIN_SOURCE, "spin", arch=f"sm_{major}{minor}")   # kept alive while loaded
        self._module, self._function = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self._lib.cuModuleLoadData(ctypes.byref(self._module), self._cubin), "cuModuleLoadData")
        self._check(self._lib.cuModuleGetFunction(ctypes.byref(self._function), self._module, b"spin"),
                    "cuModuleGetFunction")

    @staticmethod
    def _check(result: int, call: str) -> None:
        if result != 0:
            raise RuntimeError(f"{call} failed (CUresult {result})")

    def launch(self, ns: int, stream_handle: int) -> None:
        arg = ctypes.c_ulonglong(ns)
        params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
        self._check(self._lib.cuLaunchKernel(self._function, 1, 1, 1, 1, 1, 1, 0, stream_handle, params, None),
                    "cuLaunchKernel")


class _Pybind11Meta(type):
    """pybind11 raises TypeError when a Python subclass's __init__ does not call the bound base __init__."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        if not getattr(instance, "_pybind11_initialised", False):
            raise TypeError(f"{cls.__name__}.__init__() must be called when overriding __init__")
        return instance


class ILogger(metaclass=_Pybind11Meta):
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self) -> None:
        self._pybind11_initialised = True

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
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


float32, float16, int8, int32, uint8, bfloat16, int64 = (     # TensorRT's aliases (and `bool`, left out here)
    DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.UINT8, DataType.BF16, DataType.INT64)

_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
               2: DataType.UINT8, 16: DataType.BF16, 7: DataType.INT64}     # onnx.TensorProto element types


def nptype(trt_type: DataType) -> type:
    mapping = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
    if trt_type in mapping:
        return mapping[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0      # deprecated in 10.0, removed in 11
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


TENSORRT_11 = {     # module attributes that differ in TensorRT 11 (NvInfer.h at v11.1): no precision flags
    "__version__": "11.1.0.106",
    "NetworkDefinitionCreationFlag": enum.IntEnum(
        "NetworkDefinitionCreationFlag",
        {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}),
    "BuilderFlag": enum.IntEnum("BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
                                                "DISABLE_TIMING_CACHE": 5}),
}


class IProgressMonitor(metaclass=_Pybind11Meta):
    def __init__(self) -> None:
        self._pybind11_initialised = True


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype


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


def _tensor(value_info: Any) -> ITensor:
    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.dim_value else -1 for d in tensor_type.shape.dim)
    return ITensor(value_info.name, shape, _ONNX_TYPES[tensor_type.elem_type])


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
        self.network.inputs = [_tensor(t) for t in proto.graph.input]
        self.network.outputs = [_tensor(t) for t in proto.graph.output]
        self.network.ops = {n.op_type for n in proto.graph.node}
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, device: str, entries: list[str]) -> None:
        self.device = device
        self.entries = entries

    def serialize(self) -> IHostMemory | None:
        return IHostMemory(CACHE_MAGIC + json.dumps({"device": self.device, "entries": self.entries}).encode())


class IBuilderConfig:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pool_limits[pool] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        """Size 0 makes a fresh cache; a corrupt blob is logged and gives None (no exception)."""
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache(BOARD, [])
        try:
            if not blob.startswith(CACHE_MAGIC):
                raise ValueError("bad magic")
            header = json.loads(blob[len(CACHE_MAGIC):])
        except ValueError:
            self.logger.log(ILogger.ERROR, "Error Code 2: Internal Error (Assertion failed: timing cache blob is"
                                           " corrupt or of another TensorRT version)")
            return None
        return ITimingCache(header["device"], header["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.device != BOARD and not ignore_mismatch:
            self.logger.log(ILogger.ERROR, "Error Code 2: Internal Error (Timing cache was created on a device with"
                                           f" different properties: {cache.device}; set ignoreMismatch to use it)")
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class IHostMemory(bytes):
    pass


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
        return DLA_CORES

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
        error = self._check(network, config)
        if error:
            self.logger.log(ILogger.ERROR, error)
            return None
        profiles = [{t.name: [list(s) for s in p.shapes[t.name]] for t in network.inputs if t.name in p.shapes}
                    for p in config.profiles]
        io = [{"name": t.name, "mode": "INPUT", "shape": list(t.shape), "dtype": t.dtype.name} for t in network.inputs]
        io += [{"name": t.name, "mode": "OUTPUT", "shape": list(t.shape), "dtype": t.dtype.name}
               for t in network.outputs]
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"tactics for {len(network.ops)} op types")
        if monitor is not None:
            monitor.phase_finish("Building engine")
        dla = config.default_device_type == DeviceType.DLA
        return IHostMemory(MAGIC + json.dumps({"board": BOARD, "io": io, "profiles": profiles, "dla": dla}).encode())

    def _check(self, network: INetworkDefinition, config: IBuilderConfig) -> str | None:
        if config.default_device_type == DeviceType.DLA:
            if not 0 <= config.DLA_core < DLA_CORES:
                return f"DLA core {config.DLA_core} requested, but this device has {DLA_CORES} DLA cores"
            if network.ops & DLA_UNSUPPORTED and BuilderFlag.GPU_FALLBACK not in config.flags:
                return "DLA does not support Resize and GPU fallback is not enabled"
        for tensor in (t for t in network.inputs if -1 in t.shape):
            if not config.profiles or any(tensor.name not in p.shapes for p in config.profiles):
                return f"Network has dynamic input {tensor.name} but no optimization profile sets its shapes"
        return None


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.active_optimization_profile = 0           # "assigned optimization profile 0" (NvInferRuntime.h)

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles or \
                self.engine.profile_taken(profile_index, by_other_than=self):
            self.engine.logger.log(ILogger.ERROR, f"Profile {profile_index} is out of range or has been chosen by"
                                                  " another IExecutionContext")
            raise RuntimeError("Error in set optimization profile async.")
        self.active_optimization_profile = profile_index
        self.input_shapes.clear()
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(shape)
        declared = self.engine.get_tensor_shape(name)
        profile = self.active_optimization_profile
        if self.engine.dynamic and self.engine.profile_taken(profile, by_other_than=self):
            self.engine.logger.log(ILogger.ERROR, f"IExecutionContext::setInputShape: profile {profile} is used by"
                                                  " another execution context; each execution context in concurrent"
                                                  " use must use a separate optimization profile")
            return False
        low, _, high = self.engine.get_tensor_profile_shape(name, profile) if -1 in declared else (declared,) * 3
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
        if self.engine.dynamic and self.engine.profile_taken(self.active_optimization_profile, by_other_than=self):
            self.engine.logger.log(ILogger.ERROR, "IExecutionContext::enqueueV3: optimization profile shared with"
                                                  " another execution context")
            return False
        if COMPUTE_NS > 0:
            self.engine.spin().launch(COMPUTE_NS, stream_handle)
        source = next(t["name"] for t in self.engine.io if t["mode"] == "INPUT")
        size = lambda name: int(np.prod(shapes[name])) * self.engine.itemsize(name)  # noqa: E731
        return all(device_copy(self.addresses[out], self.addresses[source], min(size(out), size(source)),
                               stream_handle)
                   for out in (t["name"] for t in self.engine.io if t["mode"] == "OUTPUT"))


class ICudaEngine:
    def __init__(self, plan: dict[str, Any], dla_core: int | None, logger: ILogger) -> None:
        self.io = plan["io"]
        self.profiles = [{name: tuple(tuple(s) for s in shapes) for name, shapes in p.items()}
                         for p in plan["profiles"]]
        self.dla_core = dla_core            # stand-in only: the DLA core its DLA layers run on (None: GPU plan)
        self.logger = logger
        self.contexts: weakref.WeakSet[IExecutionContext] = weakref.WeakSet()
        self._spin: _Spin | None = None

    def spin(self) -> _Spin:
        if self._spin is None:
            self._spin = _Spin()
        return self._spin

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self.profiles))

    @property
    def device_memory_size_v2(self) -> int:
        return CONTEXT_MEMORY

    @property
    def dynamic(self) -> bool:
        return any(-1 in t["shape"] for t in self.io if t["mode"] == "INPUT")

    def get_tensor_name(self, index: int) -> str:
        return self.io[index]["name"]

    def _tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in self.io if t["name"] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensor(name)["mode"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensor(name)["dtype"]]

    def itemsize(self, name: str) -> int:
        return np.dtype(nptype(self.get_tensor_dtype(name))).itemsize

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> tuple[tuple[int, ...], ...]:
        return self.profiles[profile_index][name]

    def profile_taken(self, index: int, *, by_other_than: IExecutionContext) -> bool:
        return any(c is not by_other_than and c.active_optimization_profile == index for c in self.contexts)

    def create_execution_context(self) -> IExecutionContext | None:
        if (len(self.contexts) + 1) * CONTEXT_MEMORY > DEVICE_MEMORY:
            self.logger.log(ILogger.ERROR, f"Requested amount of GPU memory ({CONTEXT_MEMORY} bytes) could not be"
                                           " allocated. There may not be enough free memory for allocation to"
                                           " succeed.")
            return None
        context = IExecutionContext(self)
        self.contexts.add(context)
        return context


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self._dla_core = -1

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
        return DLA_CORES

    @property
    def DLA_core(self) -> int:  # noqa: N802 - TensorRT's name
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:  # noqa: N802
        if DLA_CORES:                       # "if getNbDLACores() returns 0, then this function does nothing"
            self._dla_core = core

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
        if plan["dla"] and not DLA_CORES:
            self.logger.log(ILogger.ERROR, "IRuntime::deserializeCudaEngine: the engine uses DLA, which this device"
                                           " does not have")
            return None
        return ICudaEngine(plan, max(self._dla_core, 0) if plan["dla"] else None, self.logger)
