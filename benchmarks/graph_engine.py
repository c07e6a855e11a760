"""A network run by PyTorch as an engine stand-in behind the TensorRT stand-in, for GPU tests and benchmarks
where TensorRT is missing (the device machine). The networks: benchmarks/torch_engine.py (a random-weight
YOLOv3-tiny-shaped stack) and benchmarks/onnx_engine.py (the demo ONNX itself, through onnx2torch). Both take
the demo model's IO: input `images` 1x3x416x416, heads 1x255x13x13 and 1x255x26x26, all fp32.

Like a TensorRT enqueue, one frame is one launch: the network is captured as one CUDA graph per set of
tensor addresses and batch (a TensorRT slot has one set per frame in flight), reading the input and writing
the outputs in place at those addresses, and `enqueue(addresses, stream_handle, batch)` replays it on the
caller's raw CUDA stream (torch.cuda.ExternalStream). Graphs are captured at first use of an address set
(`freeze()` turns a later one into an error, so a timed run never captures). Where the caller's stream is
itself being captured (edge's `cuda_graph: true`), the network's graph goes into that capture as a child
graph node instead, as a TensorRT enqueue's kernels would (torch cannot replay a graph inside a capture).

`tensorrt_module(network)` is tests/support/fake_tensorrt.py (the strict stand-in of the TensorRT Python API)
with `Runtime` replaced: its engines' execution contexts enqueue the network from `execute_async_v3`,
so edge.engines.tensorrt.engine.TensorRTEngine runs it unmodified. `write_plan(path, network)` writes a plan of
the network's IO with the sidecar `edge build` would write for this machine.

Needs torch with CUDA and the primary context of device 0 (the one edge.gpu.cuda and torch share).
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edge.engines.tensorrt.plan import device_key
from tests.support import fake_tensorrt

INPUT = "images"
NET = (1, 3, 416, 416)
HEADS = {"yolo0_13x13": (1, 255, 13, 13), "yolo1_26x26": (1, 255, 26, 26)}
WARM_RUNS = 3                       # eager runs before a capture (cuDNN picks its kernels outside the graph)
Forward = Callable[[torch.Tensor], Sequence[torch.Tensor]]   # the fp32 input -> the heads, in HEADS' order


@dataclasses.dataclass(frozen=True)
class DeviceArray:
    """A device pointer as a CUDA array (`__cuda_array_interface__` v2), so torch can view memory it does
    not own (edge's slot buffers)."""

    pointer: int
    shape: tuple[int, ...]

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": "<f4", "data": (self.pointer, False), "strides": None, "version": 2}

    def tensor(self) -> torch.Tensor:
        return torch.as_tensor(self)


class GraphNetwork:
    """The stand-in network on device 0, enqueued like a TensorRT execution context: one graph launch per
    frame on the given raw stream, reading and writing the given addresses."""

    def __init__(self, forward: Forward, name: str) -> None:
        """`forward`: the network on device 0, from a fp32 NCHW input (a view of the slot's input buffer) to the
        heads (any dtype and layout: they are copied into the slot's fp32 outputs); `name`: what it is, for
        reports and plan metadata."""
        torch.backends.cudnn.benchmark = True
        self.forward = forward
        self.name = name
        self._graphs: dict[tuple[tuple[str, int], ...], torch.cuda.CUDAGraph] = {}
        self._streams: dict[int, torch.cuda.ExternalStream] = {}
        self._lock = threading.Lock()
        self._frozen = False

    def freeze(self) -> None:
        """From now on an address set without a graph is an error (nothing is captured in a timed run)."""
        self._frozen = True

    def enqueue(self, addresses: Mapping[str, int], stream_handle: int, batch: int = 1) -> None:
        """Run the network on `stream_handle` from addresses[INPUT] into the HEADS' addresses, for `batch`
        images (inputs and outputs hold that many)."""
        key = (*sorted(addresses.items()), ("batch", batch))
        stream = self._stream(stream_handle)
        inside = capturing(stream_handle)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture_aside(key) if inside else self._capture(key, stream)
        if inside:
            add_to_capture(graph.raw_cuda_graph(), stream_handle)
            return
        with torch.cuda.stream(stream):
            graph.replay()

    def _stream(self, handle: int) -> torch.cuda.ExternalStream:
        stream = self._streams.get(handle)
        if stream is None:
            stream = self._streams[handle] = torch.cuda.ExternalStream(handle)
        return stream

    def _capture_aside(self, key: tuple[tuple[str, int], ...]) -> torch.cuda.CUDAGraph:
        """The network's graph for `key`, captured on a thread of its own: the caller's thread is capturing its
        stream (edge's graph mode on a frame record's first frame), where the warm-up's allocations are refused.
        Nothing runs on the caller's stream meanwhile, so nothing orders the two."""
        graphs: list[torch.cuda.CUDAGraph] = []
        errors: list[BaseException] = []

        def body() -> None:
            try:
                graphs.append(self._capture(key, None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=body, name="stand-in-capture")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return graphs[0]

    def _capture(self, key: tuple[tuple[str, int], ...],
                 stream: torch.cuda.ExternalStream | None) -> torch.cuda.CUDAGraph:
        """Warm up and capture the network for `key`; after the work on `stream` so far (the input written there),
        and before what comes after on it. None: not ordered with any stream."""
        addresses = dict(key)
        if self._frozen:
            raise RuntimeError(f"{self.name}: no CUDA graph for addresses {addresses}, and the network is frozen:"
                               " every frame record must run once before the timed runs")
        batch = addresses.pop("batch")
        with self._lock, torch.no_grad():
            if key in self._graphs:
                return self._graphs[key]
            source = DeviceArray(addresses[INPUT], (batch, *NET[1:])).tensor()
            outputs = {name: DeviceArray(addresses[name], (batch, *shape[1:])).tensor()
                       for name, shape in HEADS.items()}
            warm = torch.cuda.Stream()
            if stream is not None:
                warm.wait_stream(stream)            # the input is written on (or before) the caller's stream
            with torch.cuda.stream(warm):
                for _ in range(WARM_RUNS):
                    self._forward(source, outputs)
            if stream is not None:
                stream.wait_stream(warm)
            else:
                warm.synchronize()
            graph = torch.cuda.CUDAGraph(keep_graph=True)      # kept: edge's own capture may take it in
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._forward(source, outputs)
            self._graphs[key] = graph
        return graph

    def _forward(self, source: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        results = self.forward(source)
        if len(results) != len(outputs):
            raise RuntimeError(f"{self.name} returned {len(results)} heads; the plan has {len(outputs)}:"
                               f" {list(outputs)}")
        for target, result in zip(outputs.values(), results):
            target.copy_(result)


def capturing(stream_handle: int) -> bool:
    from cuda.bindings import runtime

    error, status = runtime.cudaStreamIsCapturing(stream_handle)
    _check(runtime, error, "cudaStreamIsCapturing")
    return status == runtime.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive


def add_to_capture(child: int, stream_handle: int) -> None:
    """Put graph `child` into the capture running on the stream, after what the stream captured so far, and make
    it what the stream's next captured work follows (CUDA 13's cuda-bindings signatures)."""
    from cuda.bindings import runtime

    error, _, _, graph, dependencies, _, count = runtime.cudaStreamGetCaptureInfo(stream_handle)
    _check(runtime, error, "cudaStreamGetCaptureInfo")
    error, node = runtime.cudaGraphAddChildGraphNode(graph, dependencies, count, child)
    _check(runtime, error, "cudaGraphAddChildGraphNode")
    flags = runtime.cudaStreamUpdateCaptureDependenciesFlags.cudaStreamSetCaptureDependencies
    error, = runtime.cudaStreamUpdateCaptureDependencies(stream_handle, [node], None, 1, flags)
    _check(runtime, error, "cudaStreamUpdateCaptureDependencies")


def _check(runtime: Any, error: Any, call: str) -> None:
    if error != runtime.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{call} failed: {error.name}")


class GraphExecutionContext(fake_tensorrt.IExecutionContext):
    """The stand-in's execution context, its enqueue the network's graph for the addresses set."""

    engine: GraphEngine

    def execute_async_v3(self, stream_handle: int) -> bool:
        if set(self.addresses) != {t["name"] for t in self.engine.io}:
            self.engine.logger.log(fake_tensorrt.ILogger.ERROR, "IExecutionContext::enqueueV3: tensor address not set")
            return False
        self.engine.network.enqueue(self.addresses, stream_handle, self.get_tensor_shape(INPUT)[0])
        return True


class GraphEngine(fake_tensorrt.ICudaEngine):
    def __init__(self, plan: dict[str, Any], logger: Any, network: GraphNetwork) -> None:
        super().__init__(plan, None, logger)
        self.network = network

    def create_execution_context(self) -> GraphExecutionContext:
        context = GraphExecutionContext(self)
        self.contexts.add(context)
        return context


class GraphRuntime(fake_tensorrt.Runtime):
    network: GraphNetwork           # set on the subclass that tensorrt_module() makes

    def deserialize_cuda_engine(self, serialized: bytes) -> GraphEngine | None:
        if super().deserialize_cuda_engine(serialized) is None:        # the stand-in's checks and messages
            return None
        plan = json.loads(bytes(serialized)[len(fake_tensorrt.MAGIC):])
        return GraphEngine(plan, self.logger, self.network)


def tensorrt_module(network: GraphNetwork) -> types.ModuleType:
    """A `tensorrt` module: the stand-in's API, its engines running `network`. Install it as
    sys.modules["tensorrt"] before edge first asks for TensorRT (edge reads the device key once)."""
    module = types.ModuleType("tensorrt", __doc__)
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)     # torch calls find_spec("tensorrt")
    module.__dict__.update({k: v for k, v in vars(fake_tensorrt).items() if not k.startswith("__")})
    module.__version__ = fake_tensorrt.__version__
    module.Runtime = type("Runtime", (GraphRuntime,), {"network": network})
    return module


def write_plan(path: Path, network: GraphNetwork, *, max_batch: int | None = None, profiles: int = 1) -> Path:
    """A plan with the demo model's IO (fp32 input, fp32 heads), built by the stand-in's builder, and the sidecar
    naming `network` for this machine (edge.engines.tensorrt.plan.device_key(): the `tensorrt` module must be
    installed). With `max_batch` the batch dimension is dynamic, with `profiles` profiles (one per slot) of 1 to
    max_batch images (opt: max_batch)."""
    trt = fake_tensorrt
    builder = trt.Builder(trt.Logger())
    definition = builder.create_network()
    config = builder.create_builder_config()
    net = NET
    if max_batch is not None:
        net = (max_batch, *NET[1:])
        for _ in range(profiles):
            profile = builder.create_optimization_profile()
            profile.set_shape(INPUT, (1, *NET[1:]), net, net)
            config.add_optimization_profile(profile)
    batch = NET[0] if max_batch is None else -1
    definition.inputs = [trt.ITensor(INPUT, (batch, *NET[1:]), trt.DataType.FLOAT)]
    definition.outputs = [trt.ITensor(name, (batch, *shape[1:]), trt.DataType.FLOAT) for name, shape in HEADS.items()]
    plan = builder.build_serialized_network(definition, config)
    if plan is None:
        raise RuntimeError("the TensorRT stand-in could not build the benchmark's plan")
    path.write_bytes(bytes(plan))
    here = device_key()
    if here is None:
        raise RuntimeError("install tensorrt_module() as sys.modules['tensorrt'] before write_plan()")
    key = dataclasses.replace(here, precision="fp16", input_shapes=((INPUT, net),))
    sidecar = {"device": key.to_json(), "dla_core": None, "metadata": {"stand_in": network.name}}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return path
