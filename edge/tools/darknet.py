"""Darknet (cfg + weights) -> ONNX converter for the YOLOv3-tiny family, numpy + onnx only.

Supported layers: convolutional (batch-norm folded with Darknet's eps 1e-6, leaky 0.1 or linear),
maxpool (Darknet's end padding, incl. the stride-1 pool), route, upsample (nearest) and yolo.
The outputs are the raw heads, one per [yolo] layer, named `yolo{i}_{H}x{W}`, shaped
[1, anchors*(5+classes), H, W]. Anchors, strides and labels go into the model's metadata
so the detector task can decode the heads without extra configuration.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.engines.repository import atomic_output
from edge.errors import EngineError

BN_EPS = 1e-6
LEAKY_SLOPE = 0.1
OPSET = 13
IR_VERSION = 8


@dataclasses.dataclass
class _Tensor:
    name: str
    channels: int
    height: int
    width: int


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Sections of a Darknet cfg as dicts with a `type` key, in file order."""
    sections: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append({"type": line[1:-1].strip()})
        elif "=" in line:
            if not sections:
                raise EngineError(f"Darknet cfg line {number}: {line!r} comes before the first [section];"
                                  " a cfg must start with a [net] section")
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise EngineError(f"Darknet cfg line {number} is neither [section] nor key=value: {line!r}")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise EngineError("Darknet cfg must start with a [net] section")
    return sections


class _WeightReader:
    def __init__(self, path: Path) -> None:
        data = _read_input(path, "weights")
        if len(data) < 20:
            raise EngineError(f"Darknet weights file {path} is too short ({len(data)} bytes)")
        major, minor, _ = np.frombuffer(data[:12], np.int32)
        header = 20 if (major * 10 + minor >= 2 and major < 1000 and minor < 1000) else 16
        self._floats = np.frombuffer(data[header:], np.float32)
        self._pos = 0
        self.path = path

    def take(self, count: int) -> np.ndarray:
        if self._pos + count > self._floats.size:
            raise EngineError(f"Darknet weights {self.path} end early: need {self._pos + count} floats,"
                              f" file has {self._floats.size}", hint="the cfg and weights files do not belong together")
        out = self._floats[self._pos:self._pos + count]
        self._pos += count
        return out

    def check_consumed(self) -> None:
        if self._pos != self._floats.size:
            raise EngineError(f"Darknet weights {self.path} have {self._floats.size - self._pos} floats left over",
                              hint="the cfg and weights files do not belong together")


class _Builder:
    def __init__(self, onnx: Any, weights: _WeightReader) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.weights = weights
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv(self, i: int, sec: dict[str, str], x: _Tensor) -> _Tensor:
        n, k, stride = int(sec["filters"]), int(sec["size"]), int(sec.get("stride", 1))
        pad = k // 2 if int(sec.get("pad", 0)) else int(sec.get("padding", 0))
        bias = self.weights.take(n).copy()
        w_count = n * x.channels * k * k
        if int(sec.get("batch_normalize", 0)):
            scale, mean, var = (self.weights.take(n) for _ in range(3))
            weight = self.weights.take(w_count).reshape(n, x.channels, k, k)
            factor = scale / np.sqrt(var + BN_EPS)
            weight = weight * factor[:, None, None, None]
            bias = bias - mean * factor
        else:
            weight = self.weights.take(w_count).reshape(n, x.channels, k, k)
        out = f"conv{i}"
        self.nodes.append(self.helper.make_node(
            "Conv", [x.name, self.const(f"conv{i}.weight", weight.astype(np.float32)),
                     self.const(f"conv{i}.bias", bias.astype(np.float32))], [out], name=out,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        size = lambda v: (v + 2 * pad - k) // stride + 1  # noqa: E731
        y = _Tensor(out, n, size(x.height), size(x.width))
        activation = sec.get("activation", "linear")
        if activation == "leaky":
            self.nodes.append(self.helper.make_node("LeakyRelu", [out], [f"leaky{i}"], name=f"leaky{i}",
                                                    alpha=LEAKY_SLOPE))
            y.name = f"leaky{i}"
        elif activation != "linear":
            raise EngineError(f"layer {i}: activation {activation!r} is not supported (leaky, linear)")
        return y

    def maxpool(self, i: int, sec: dict[str, str], x: _Tensor) -> _Tensor:
        k, stride = int(sec["size"]), int(sec.get("stride", 1))
        padding = int(sec.get("padding", k - 1))
        begin, end = padding // 2, padding - padding // 2
        out = f"pool{i}"
        self.nodes.append(self.helper.make_node("MaxPool", [x.name], [out], name=out, kernel_shape=[k, k],
                                                strides=[stride, stride], pads=[begin, begin, end, end]))
        size = lambda v: (v + padding - k) // stride + 1  # noqa: E731
        return _Tensor(out, x.channels, size(x.height), size(x.width))

    def upsample(self, i: int, sec: dict[str, str], x: _Tensor) -> _Tensor:
        s = int(sec.get("stride", 2))
        out = f"upsample{i}"
        scales = self.const(f"upsample{i}.scales", np.array([1, 1, s, s], np.float32))
        self.nodes.append(self.helper.make_node(
            "Resize", [x.name, "", scales], [out], name=out, mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        return _Tensor(out, x.channels, x.height * s, x.width * s)

    def route(self, i: int, sec: dict[str, str], layers: list[_Tensor]) -> _Tensor:
        picks = [layers[int(v) if int(v) >= 0 else i + int(v)] for v in sec["layers"].split(",")]
        if len(picks) == 1:
            return picks[0]
        if len({(t.height, t.width) for t in picks}) != 1:
            raise EngineError(f"layer {i}: route joins layers of different sizes")
        out = f"route{i}"
        self.nodes.append(self.helper.make_node("Concat", [t.name for t in picks], [out], name=out, axis=1))
        return _Tensor(out, sum(t.channels for t in picks), picks[0].height, picks[0].width)


def convert(cfg_path: Path, weights_path: Path, names_path: Path, out_path: Path) -> dict[str, Any]:
    """Convert a Darknet model to ONNX at `out_path` (written atomically). Returns the YOLO metadata."""
    import onnx

    sections = parse_cfg(_read_input(Path(cfg_path), "cfg").decode("utf-8", "replace"))
    labels = [n.strip() for n in _read_input(Path(names_path), "names file").decode("utf-8", "replace").splitlines()
              if n.strip()]
    builder = _Builder(onnx, _WeightReader(Path(weights_path)))
    try:
        return _convert(onnx, sections, labels, builder, Path(cfg_path), Path(out_path))
    except (KeyError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise EngineError(f"Darknet cfg {cfg_path} cannot be converted: {type(exc).__name__}: {exc}",
                          hint="a [net] section needs width and height; each layer its usual keys (the YOLOv3-tiny"
                               " cfg of the demo shows them)") from None


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read the Darknet {what} {path}: {exc.strerror}",
                          hint="check the path; `edge assets fetch` gets the demo's cfg, weights and names") from None


def _convert(onnx: Any, sections: list[dict[str, str]], labels: list[str], builder: _Builder, cfg_path: Path,
             out_path: Path) -> dict[str, Any]:
    net = sections[0]
    x = _Tensor("images", int(net.get("channels", 3)), int(net["height"]), int(net["width"]))
    layers: list[_Tensor] = []
    heads: list[dict[str, Any]] = []
    for i, sec in enumerate(sections[1:]):
        kind = sec["type"]
        if kind == "convolutional":
            x = builder.conv(i, sec, x)
        elif kind == "maxpool":
            x = builder.maxpool(i, sec, x)
        elif kind == "upsample":
            x = builder.upsample(i, sec, x)
        elif kind == "route":
            x = builder.route(i, sec, layers)
        elif kind == "yolo":
            heads.append(_yolo_head(i, sec, x, len(labels), int(net["width"])))
        else:
            raise EngineError(f"layer {i}: Darknet layer type [{kind}] is not supported",
                              hint="supported: convolutional, maxpool, route, upsample, yolo")
        layers.append(x)
    builder.weights.check_consumed()
    meta = {"anchors": [h["anchors"] for h in heads], "strides": [h["stride"] for h in heads],
            "num_classes": len(labels), "labels": labels}
    outputs = []
    for n, head in enumerate(heads):
        name = f"yolo{n}_{head['tensor'].height}x{head['tensor'].width}"
        builder.nodes.append(onnx.helper.make_node("Identity", [head["tensor"].name], [name], name=name))
        t = head["tensor"]
        shape = [1, t.channels, t.height, t.width]
        outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    graph = onnx.helper.make_graph(
        builder.nodes, Path(cfg_path).stem,
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT,
                                            [1, int(net.get("channels", 3)), int(net["height"]), int(net["width"])])],
        outputs, builder.inits)
    model = onnx.helper.make_model(graph, producer_name="edge.tools.darknet",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.helper.set_model_props(model, {"edge.model": "yolo", "edge.yolo": json.dumps(meta, allow_nan=False)})
    onnx.checker.check_model(model)
    with atomic_output(Path(out_path)) as tmp:             # a failed write (a full disk) leaves no partial file
        onnx.save(model, str(tmp))
    return meta


def _yolo_head(i: int, sec: dict[str, str], x: _Tensor, num_classes: int, input_width: int) -> dict[str, Any]:
    mask = [int(v) for v in sec["mask"].split(",")]
    flat = [int(v) for v in sec["anchors"].split(",")]
    pairs = [flat[j:j + 2] for j in range(0, len(flat), 2)]
    if int(sec.get("classes", num_classes)) != num_classes:
        raise EngineError(f"layer {i}: [yolo] has classes={sec.get('classes')} but the names file lists {num_classes}")
    if x.channels != len(mask) * (5 + num_classes):
        raise EngineError(f"layer {i}: [yolo] input has {x.channels} channels,"
                          f" expected {len(mask) * (5 + num_classes)}")
    return {"tensor": x, "anchors": [pairs[m] for m in mask], "stride": input_width // x.width}
