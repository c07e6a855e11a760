"""An engine stand-in that does a real network's work, for GPU benchmarks where TensorRT is missing.

The network: the demo model's shape class, a YOLOv3-tiny-shaped conv stack (the 13 convolutions of
yolov3-tiny.cfg with folded batch norm, LeakyReLU 0.1, the six max pools including the stride-1 one with
end padding, the nearest upsample and the route concat; input 1x3x416x416, heads 1x255x13x13 and
1x255x26x26), random weights from a fixed seed, run in fp16 (channels-last) by PyTorch. Its IO stays
fp32, as the demo's fp16 variant keeps its IO types.

Like a TensorRT enqueue, one frame is one launch: the network is captured as one CUDA graph per set of
tensor addresses and batch (a TensorRT slot has one set per frame in flight), reading the input and writing
the outputs in place at those addresses, and `enqueue(addresses, stream_handle, batch)` replays it on the
caller's raw CUDA stream (torch.cuda.ExternalStream). Graphs are captured at first use of an address set
(`freeze()` turns a later one into an error, so a timed run never captures). Where the caller's stream is
itself being captured (edge's `cuda_graph: true`), the network's graph goes into that capture as a child
graph node instead, as a TensorRT enqueue's kernels would (torch cannot replay a graph inside a capture).

`tensorrt_module(network)` is tests/support/fake_tensorrt.py (the strict stand-in of the TensorRT Python API)
with `Runtime` replaced: its engines' execution contexts enqueue this network from `execute_async_v3`,
so edge.engines.tensorrt.engine.TensorRTEngine runs it unmodified. `write_plan(path)` writes a plan of the
network's IO with the sidecar `edge build` would write for this machine.

Needs torch with CUDA and the primary context of device 0 (the one edge.gpu.cuda and torch share).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge.engines.tensorrt.plan import device_key
from tests.support import fake_tensorrt

NAME = ("YOLOv3-tiny-shaped fp16 conv stack (random weights), PyTorch, one CUDA graph per frame record"
        " replayed on the caller's stream")
INPUT = "images"
NET = (1, 3, 416, 416)
HEADS = {"yolo0_13x13": (1, 255, 13, 13), "yolo1_26x26": (1, 255, 26, 26)}
WARM_RUNS = 3                       # eager runs before a capture (cuDNN picks its kernels outside the graph)


class TinyYoloShaped(nn.Module):
    """The layers of yolov3-tiny.cfg, without its YOLO decode (edge decodes on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 16, 32, 64, 128, 256]
        self.backbone = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(widths, widths[1:]))
        self.conv512 = nn.Conv2d(256, 512, 3, padding=1)
        self.conv1024 = nn.Conv2d(512, 1024, 3, padding=1)
        self.neck = nn.Conv2d(1024, 256, 1)
        self.pre13 = nn.Conv2d(256, 512, 3, padding=1)
        self.head13 = nn.Conv2d(512, 255, 1)
        self.lateral = nn.Conv2d(256, 128, 1)
        self.pre26 = nn.Conv2d(384, 256, 3, padding=1)
        self.head26 = nn.Conv2d(256, 255, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for index, conv in enumerate(self.backbone):        # 416 -> 26 (four 2x2 pools), 256 channels
            x = _leaky(conv(x))
            if index < len(self.backbone) - 1:
                x = F.max_pool2d(x, 2, 2)
        route26 = x
        x = _leaky(self.conv512(F.max_pool2d(x, 2, 2)))
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)     # the stride-1 pool, end padding
        neck = _leaky(self.neck(_leaky(self.conv1024(x))))
        out13 = self.head13(_leaky(self.pre13(neck)))
        up = F.interpolate(_leaky(self.lateral(neck)), scale_factor=2, mode="nearest")
        out26 = self.head26(_leaky(self.pre26(torch.cat([up, route26], 1))))
        return out13, out26


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


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

    def __init__(self, *, seed: int = 0) -> None:
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(seed)
        model = TinyYoloShaped().to(device="cuda", dtype=torch.float16, memory_format=torch.channels_last)
        self.model = model.eval().requires_grad_(False)
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
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(key, stream)
        if capturing(stream_handle):
            add_to_capture(graph.raw_cuda_graph(), stream_handle)
            return
        with torch.cuda.stream(stream):
            graph.replay()

    def _stream(self, handle: int) -> torch.cuda.ExternalStream:
        stream = self._streams.get(handle)
        if stream is None:
            stream = self._streams[handle] = torch.cuda.ExternalStream(handle)
        return stream

    def _capture(self, key: tuple[tuple[str, int], ...], stream: torch.cuda.ExternalStream) -> torch.cuda.CUDAGraph:
        addresses = dict(key)
        if self._frozen:
            raise RuntimeError(f"the stand-in network has no CUDA graph for addresses {addresses} and is frozen:"
                               " every frame record must run once before the timed runs")
        batch = addresses.pop("batch")
        with self._lock, torch.no_grad():
            if key in self._graphs:
                return self._graphs[key]
            source = DeviceArray(addresses[INPUT], (batch, *NET[1:])).tensor()
            outputs = {name: DeviceArray(addresses[name], (batch, *shape[1:])).tensor()
                       for name, shape in HEADS.items()}
            warm = torch.cuda.Stream()
            warm.wait_stream(stream)                # the input is written on (or before) the caller's stream
            with torch.cuda.stream(warm):
                for _ in range(WARM_RUNS):
                    self._forward(source, outputs)
            stream.wait_stream(warm)
            graph = torch.cuda.CUDAGraph(keep_graph=True)      # kept: edge's own capture may take it in
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._forward(source, outputs)
            self._graphs[key] = graph
        return graph

    def _forward(self, source: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        image = source.to(dtype=torch.float16, memory_format=torch.channels_last)
        for target, result in zip(outputs.values(), self.model(image)):
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
    module.__dict__.update({k: v for k, v in vars(fake_tensorrt).items() if not k.startswith("__")})
    module.__version__ = fake_tensorrt.__version__
    module.Runtime = type("Runtime", (GraphRuntime,), {"network": network})
    return module


def write_plan(path: Path, *, max_batch: int | None = None, profiles: int = 1) -> Path:
    """A plan with the network's IO (fp32 input, fp32 heads), built by the stand-in's builder, and the sidecar
    for this machine (edge.engines.tensorrt.plan.device_key(): the `tensorrt` module must be installed). With
    `max_batch` the batch dimension is dynamic, with `profiles` profiles (one per slot) of 1 to max_batch images
    (opt: max_batch)."""
    trt = fake_tensorrt
    builder = trt.Builder(trt.Logger())
    network = builder.create_network()
    config = builder.create_builder_config()
    net = NET
    if max_batch is not None:
        net = (max_batch, *NET[1:])
        for _ in range(profiles):
            profile = builder.create_optimization_profile()
            profile.set_shape(INPUT, (1, *NET[1:]), net, net)
            config.add_optimization_profile(profile)
    batch = NET[0] if max_batch is None else -1
    network.inputs = [trt.ITensor(INPUT, (batch, *NET[1:]), trt.DataType.FLOAT)]
    network.outputs = [trt.ITensor(name, (batch, *shape[1:]), trt.DataType.FLOAT) for name, shape in HEADS.items()]
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("the TensorRT stand-in could not build the benchmark's plan")
    path.write_bytes(bytes(plan))
    here = device_key()
    if here is None:
        raise RuntimeError("install tensorrt_module() as sys.modules['tensorrt'] before write_plan()")
    key = dataclasses.replace(here, precision="fp16", input_shapes=((INPUT, net),))
    sidecar = {"device": key.to_json(), "dla_core": None, "metadata": {"stand_in": NAME}}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return path
