"""YOLO detector task (Darknet YOLOv3 family): letterbox in, both heads decoded, class-wise NMS out.

Decoding per head cell (col, row) and anchor (aw, ah), Darknet semantics:
  cx = (col + sigmoid(tx)) * stride, cy = (row + sigmoid(ty)) * stride,
  w = aw * exp(tw), h = ah * exp(th), score = sigmoid(tobj) * sigmoid(class logit)  (no softmax).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge.config.schema import DetectorParams, TaskConfig
from edge.engines.base import Engine, LetterboxPreprocessing
from edge.errors import EngineError
from edge.letterbox import Letterbox, letterbox_into


@dataclasses.dataclass(frozen=True)
class _Head:
    name: str
    stride: int
    grid_x: np.ndarray      # per row of the flattened (anchor, y, x) layout
    grid_y: np.ndarray
    anchor_w: np.ndarray
    anchor_h: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


class YoloDetector:
    """Decodes the raw heads of a YOLO model whose ONNX metadata `edge.yolo` holds anchors and labels; its input
    is the letterboxed frame, padded with Darknet's grey."""

    preprocessing: ClassVar[LetterboxPreprocessing] = LetterboxPreprocessing(fill=0.5)

    def __init__(self, *, input_shape: tuple[int, ...], heads: list[_Head], labels: list[str],
                 params: DetectorParams) -> None:
        self.input_shape = input_shape
        self.heads = heads
        self.labels = labels
        self.params = params

    @classmethod
    def from_engine(cls, config: TaskConfig, engine: Engine) -> YoloDetector:
        meta = _yolo_metadata(engine)
        labels = _labels(config.params.labels, meta["labels"])
        spec = engine.inputs[0]
        _check_input(config, engine)
        batch, height, width = spec.shape[0], spec.shape[2], spec.shape[3]
        outputs = {o.name: o for o in engine.outputs}
        if len(meta["anchors"]) != len(engine.outputs):
            raise EngineError(f"task {config.name!r}: model has {len(engine.outputs)} outputs but its metadata"
                              f" describes {len(meta['anchors'])} YOLO heads", note=f"model: {engine.path}")
        heads = []
        for out, anchors, stride in zip(engine.outputs, meta["anchors"], meta["strides"]):
            expected = (batch, len(anchors) * (5 + len(labels)), height // stride, width // stride)
            if tuple(outputs[out.name].shape) != expected:
                raise EngineError(f"task {config.name!r}: output {out.name} has shape {list(out.shape)},"
                                  f" expected {list(expected)} for input {width}x{height}, {len(labels)} classes",
                                  note=f"model: {engine.path}",
                                  hint="the labels file must match the model's classes")
            heads.append(_make_head(out.name, stride, anchors, expected[2], expected[3]))
        return cls(input_shape=spec.shape, heads=heads, labels=labels, params=config.params)

    def preprocess(self, image: np.ndarray, out: np.ndarray) -> Letterbox:
        return letterbox_into(image, out, fill=self.preprocessing.fill)

    def postprocess(self, outputs: dict[str, np.ndarray], meta: Letterbox) -> np.ndarray:
        conf = self.params.conf_threshold
        found = [self._decode(head, outputs[head.name], conf) for head in self.heads]
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        classes = np.concatenate([f[2] for f in found])
        if not scores.size:
            return np.zeros((0, 6), np.float32)
        offset = classes[:, None] * (max(self.input_shape[2:]) * 4.0)
        keep = nms(boxes + offset, scores, self.params.nms_iou)[:self.params.max_detections]
        result = np.empty((keep.size, 6), np.float32)
        result[:, :4] = meta.to_source(boxes[keep])
        result[:, 4] = scores[keep]
        result[:, 5] = classes[keep]
        return result

    def preprocess_batch(self, images: list[np.ndarray], out: np.ndarray) -> list[Letterbox]:
        return [letterbox_into(image, out[i:i + 1], fill=self.preprocessing.fill) for i, image in enumerate(images)]

    def postprocess_batch(self, outputs: dict[str, np.ndarray], metas: list[Letterbox]) -> list[np.ndarray]:
        return [self.postprocess({name: value[i:i + 1] for name, value in outputs.items()}, meta)
                for i, meta in enumerate(metas)]

    def _decode(self, head: _Head, raw: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        anchors = head.anchor_w.size // (raw.shape[2] * raw.shape[3])
        cells = raw.shape[2] * raw.shape[3]
        t = raw.reshape(anchors, -1, cells).transpose(0, 2, 1).reshape(-1, raw.shape[1] // anchors)
        objectness = _sigmoid(t[:, 4])
        rows = np.nonzero(objectness > conf)[0]
        scores = objectness[rows, None] * _sigmoid(t[rows, 5:])
        cell, cls = np.nonzero(scores > conf)
        rows_kept = rows[cell]
        cand = t[rows_kept]
        cx = (head.grid_x[rows_kept] + _sigmoid(cand[:, 0])) * head.stride
        cy = (head.grid_y[rows_kept] + _sigmoid(cand[:, 1])) * head.stride
        w = head.anchor_w[rows_kept] * np.exp(cand[:, 2])
        h = head.anchor_h[rows_kept] * np.exp(cand[:, 3])
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return boxes, scores[cell, cls], cls.astype(np.float32)


def _check_input(config: TaskConfig, engine: Engine) -> None:
    """The detector takes float32 [1, 3, H, W] images; a batched task (`batch: true`) any batch of them."""
    spec = engine.inputs[0]
    image = len(spec.shape) == 4 and spec.shape[1] == 3 and spec.dtype == np.float32
    if image and (spec.shape[0] == 1 or config.batch):
        return
    wanted = "[N, 3, H, W]" if config.batch else "[1, 3, H, W]"
    hint = ("a model with a batch of N images runs on a task of N cameras with batch: true"
            if image and not config.batch else None)
    raise EngineError(f"task {config.name!r}: model input {spec.name} is {spec.dtype} {list(spec.shape)};"
                      f" the detector needs float32 {wanted}", note=f"model: {engine.path}", hint=hint)


def _make_head(name: str, stride: int, anchors: list[list[int]], rows: int, cols: int) -> _Head:
    a = np.asarray(anchors, np.float32)
    gy, gx = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    count = len(anchors)
    return _Head(name, stride, np.tile(gx.ravel(), count), np.tile(gy.ravel(), count),
                 np.repeat(a[:, 0], rows * cols), np.repeat(a[:, 1], rows * cols))


def _yolo_metadata(engine: Engine) -> dict[str, Any]:
    text = engine.metadata.get("edge.yolo")
    if not text:
        raise EngineError(f"model {engine.path} has no `edge.yolo` metadata (anchors, strides, labels)",
                          hint="convert Darknet models with `edge model darknet2onnx`, which embeds it")
    try:
        meta = json.loads(text)
        if not (len(meta["anchors"]) == len(meta["strides"]) and isinstance(meta["labels"], list)):
            raise ValueError("anchors and strides differ in length")
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"model {engine.path} has malformed `edge.yolo` metadata: {exc}") from exc
    return meta


def _labels(path: str | None, embedded: list[str]) -> list[str]:
    if path is None:
        return list(embedded)
    try:
        names = [n.strip() for n in Path(path).read_text(encoding="utf-8").splitlines() if n.strip()]
    except OSError as exc:
        raise EngineError(f"cannot read labels file {path}: {exc.strerror}") from exc
    if len(names) != len(embedded):
        raise EngineError(f"labels file {path} lists {len(names)} classes, the model has {len(embedded)}")
    return names
