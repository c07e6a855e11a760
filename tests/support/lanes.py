"""Small lanes for pipeline and supervisor tests: a tiny YOLO-shaped head, a lossless camera, task runtimes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.config.cameras import parse_uri
from edge.config.schema import TaskConfig
from edge.engines.factory import Variants
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.pipeline.cameras import Camera
from edge.pipeline.runtime import TaskRuntime
from edge.wire.client import Message, Subscriber
from tests.support.models import conv_model

IMAGE = np.zeros((48, 64, 3), np.uint8)


YOLO = {"anchors": [[[10, 14], [23, 27], [37, 58]]], "strides": [32], "labels": ["a", "b"]}


def lossless_camera(name: str = "c") -> Camera:
    """A real camera object (not started): the test puts frames into its LatestFrame itself."""
    return Camera(name, parse_uri("test://bars?size=64x48&realtime=0"), on_event=lambda name, details: None)


def two_variants(tmp_path: Path) -> dict[str, Path]:
    """Two files with the detector's layout, standing for the fp32 and int8 variants of one model. On a
    bright frame the "int8" one detects (scores near 0.9) and the "fp32" one does not (0.25 < 0.3), so a
    result shows which engine really ran its frame."""
    shape = {"input_shape": [1, 3, 64, 64], "out_channels": 21, "stride": 32, "yolo_meta": YOLO}
    return {"fp32": conv_model(tmp_path / "m.onnx", **shape),
            "int8": conv_model(tmp_path / "m.int8.onnx", weight=1.0, **shape)}


def runtime(tmp_path: Path, events: list[tuple[str, dict[str, Any]]], **fields: Any) -> TaskRuntime:
    files = two_variants(tmp_path)
    config = TaskConfig(name="objects", type="detector", variants={p: str(f) for p, f in files.items()},
                        cameras=["c"], **fields)
    engines = {p: OnnxRuntimeEngine(f, precision=p, threads=1) for p, f in files.items()}
    return TaskRuntime(config, Variants(engines, {}), lambda name, details: events.append((name, details)))


def published(subscriber: Subscriber, count: int) -> list[Message]:
    """Exactly `count` results, then nothing more."""
    messages = []
    for _ in range(count):
        message = subscriber.recv(timeout=10)
        assert message is not None, f"only {len(messages)} of {count} results arrived"
        messages.append(message)
    assert subscriber.recv(timeout=0) is None, "more results than frames processed"
    return messages
