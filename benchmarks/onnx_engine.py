"""The demo model itself as an engine stand-in, for GPU tests and benchmarks where TensorRT is missing: the
demo ONNX (default: its fp16 variant, which keeps fp32 IO) converted by onnx2torch 1.5.15 into a torch.fx module
on the GPU, run behind the TensorRT stand-in by benchmarks/graph_engine.py (one CUDA graph per frame record),
so edge.engines.tensorrt.engine.TensorRTEngine runs the real network unmodified.

onnx2torch's Resize reads its scales tensor with `.tolist()` on every call: a device-to-host copy, which a CUDA
graph capture refuses (and edge's `cuda_graph` capture with it). `replace_resizes` puts a `FixedResize` in place
of each Resize whose scales are a constant of the ONNX (an initializer) before anything is captured: the same
`F.interpolate` call with those scales read once, on the host. Its output equals the Resize's bit for bit
(tests/gpu/test_real_model.py checks that, and the network against ONNX Runtime on the CPU). Running eagerly
instead would make edge's graph-mode slots fall back to streams, so the real network could not be measured there.

onnx2torch imports torchvision for two converters the demo model does not need (NonMaxSuppression, RoiAlign);
where torchvision is missing (the device machine has torch alone) `import_onnx2torch` imports it against a
placeholder whose functions raise when called.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import fx, nn

from benchmarks.graph_engine import HEADS, INPUT, NET, GraphNetwork
from edge import files
from edge.tools.assets import DemoAssets

ONNX2TORCH = "1.5.15"           # the version whose Resize and module naming this module follows
SCALES_MODE = "nearest"         # the only Resize mode replaced (the demo's upsample)


def demo_onnx() -> Path:
    """The demo's fp16 variant in the asset cache ($EDGE_CACHE; `edge assets fetch` makes it)."""
    return DemoAssets(files.default_cache_dir()).variant("fp16")


def engine_repository(root: Path, source: Path | None = None) -> Path:
    """An engine repository at `root` whose one variant is a copy of the ONNX at `source` (default: the demo's fp16
    variant): a task with `engines: ROOT` and the TensorRT stand-in installed builds its plan there on first use
    (edge.engines.factory) and runs it."""
    from edge.engines import repository
    from edge.engines.tensorrt.build import variant_precision

    source = source or demo_onnx()
    root.mkdir(parents=True, exist_ok=True)
    copy = root / source.name
    shutil.copyfile(source, copy)
    variant = repository.Variant(variant_precision(onnx.load(str(copy))), "onnx", copy.name,
                                 repository.sha256_file(copy))
    repository.Manifest(root, source.name.split(".")[0], [variant]).save()
    return root


def _refuse(name: str) -> Any:
    if name.startswith("__"):                       # __file__, __path__...: what a placeholder module lacks
        raise AttributeError(name)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torchvision.ops.{name} was called, and torchvision is not installed: onnx2torch needs it"
                           " for NonMaxSuppression and RoiAlign only; install the torchvision that matches torch")
    return refuse


@contextlib.contextmanager
def _placeholder_torchvision() -> Iterator[None]:
    """`torchvision` and `torchvision.ops` as placeholders while onnx2torch imports, removed afterwards."""
    ops = types.ModuleType("torchvision.ops")
    ops.__getattr__ = _refuse                       # module __getattr__ (PEP 562): any name is a refusing function
    vision = types.ModuleType("torchvision")
    vision.ops = ops
    sys.modules.update({"torchvision": vision, "torchvision.ops": ops})
    try:
        yield
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]


def import_onnx2torch() -> types.ModuleType:
    """onnx2torch (ONNX2TORCH), importable with or without torchvision."""
    missing = importlib.util.find_spec("torchvision") is None
    with _placeholder_torchvision() if missing else contextlib.nullcontext():
        import onnx2torch
    from importlib.metadata import version

    if version("onnx2torch") != ONNX2TORCH:
        raise RuntimeError(f"onnx2torch {version('onnx2torch')} is installed; this stand-in follows {ONNX2TORCH}'s"
                           f" Resize module: pip install onnx2torch=={ONNX2TORCH}")
    return onnx2torch


def check_io(model: onnx.ModelProto, path: Path) -> None:
    """The demo model's IO (graph_engine's INPUT, NET, HEADS), all fp32, or a RuntimeError naming what differs."""
    def described(values: Any) -> dict[str, tuple[tuple[int, ...], int]]:
        return {v.name: (tuple(d.dim_value for d in v.type.tensor_type.shape.dim), v.type.tensor_type.elem_type)
                for v in values}

    fp32 = onnx.TensorProto.FLOAT
    want = {"inputs": {INPUT: (NET, fp32)}, "outputs": {name: (shape, fp32) for name, shape in HEADS.items()}}
    got = {"inputs": described(model.graph.input), "outputs": described(model.graph.output)}
    if got != want:
        raise RuntimeError(f"{path} is not the demo model's IO: {got}, the stand-in plans declare {want} (fp32 = 1)."
                           " Give the demo's fp32 or fp16 variant (the fp16 one keeps fp32 IO)")


class FixedResize(nn.Module):
    """onnx2torch's Resize with its constant scales read once: F.interpolate(x, scale_factor=scales, mode) as
    OnnxResize calls it, without a host copy per call."""

    def __init__(self, scales: tuple[float, ...], mode: str) -> None:
        super().__init__()
        self.scales = scales
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=list(self.scales), mode=self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={list(self.scales)}, mode={self.mode!r}"


def replace_resizes(module: fx.GraphModule) -> list[str]:
    """Replace each onnx2torch Resize of `module` by a FixedResize, in place; the names of those replaced. A Resize
    whose scales are computed in the graph, or given as sizes, or of another mode than nearest, is a RuntimeError
    (a CUDA graph could not capture it)."""
    import_onnx2torch()
    from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10

    replaced = []
    for node in list(module.graph.nodes):
        if node.op != "call_module":
            continue
        resize = module.get_submodule(node.target)
        if not isinstance(resize, (OnnxResize, OnnxResizeV10)):
            continue
        inner = resize._resize if isinstance(resize, OnnxResizeV10) else resize
        bound = inspect.signature(resize.forward).bind(*node.args, **node.kwargs).arguments
        scales = bound.get("scales")
        if bound.get("sizes") is not None or not isinstance(scales, fx.Node) or scales.op != "get_attr" \
                or inner.onnx_mode != SCALES_MODE:
            raise RuntimeError(f"Resize {node.target}: mode {inner.onnx_mode!r}, scales {scales}, sizes"
                               f" {bound.get('sizes')}: only a {SCALES_MODE} Resize with constant scales can be"
                               " captured in a CUDA graph here (onnx2torch reads scales and sizes on the host)")
        values = [float(v) for v in module.get_buffer(scales.target).tolist()]
        if values[:2] != [1.0, 1.0]:
            raise RuntimeError(f"Resize {node.target} scales its batch or channel axis: {values}")
        fixed = f"{node.target}_fixed"
        module.add_submodule(fixed, FixedResize(tuple(values[2:]), "nearest"))
        with module.graph.inserting_after(node):
            new = module.graph.call_module(fixed, args=(bound["input_tensor"],))
        node.replace_all_uses_with(new)
        module.graph.erase_node(node)
        module.delete_submodule(node.target)
        replaced.append(node.target)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return replaced


def convert(path: Path) -> fx.GraphModule:
    """The ONNX at `path` as a torch.fx module on the CPU, its Resizes replaced (at least one: the demo's)."""
    model = onnx.load(str(path))
    check_io(model, path)
    module = import_onnx2torch().convert(model)
    if not replace_resizes(module):
        raise RuntimeError(f"{path} has no Resize for the stand-in to replace: is it the demo model?")
    return module.eval().requires_grad_(False)


def network(path: Path | None = None) -> GraphNetwork:
    """The ONNX at `path` (default: the demo's fp16 variant) on device 0, channels-last; its own Cast nodes take
    the fp32 input to fp16 and the heads back to fp32."""
    path = path or demo_onnx()
    module = convert(path).to(device="cuda", memory_format=torch.channels_last)

    def forward(source: torch.Tensor) -> list[torch.Tensor]:
        return module(source.contiguous(memory_format=torch.channels_last))

    return GraphNetwork(forward, f"{path.name} (the demo model, real weights) converted by onnx2torch {ONNX2TORCH},"
                                 " PyTorch, one CUDA graph per frame record replayed on the caller's stream")
