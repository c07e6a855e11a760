"""Shared values for tests of the wire: a valid detection message, the longest topic prefix."""
from __future__ import annotations

from edge.config.wire import NAME_BYTES


def det(**override: object) -> dict:
    payload = {"v": 1, "kind": "det", "seq": 0, "t_publish_ns": 2, "t_wall_ns": 3, "task": "t", "camera": "c",
               "frame": 0, "t_capture_ns": 1, "precision": "fp32", "engine": "m.onnx:onnxruntime:fp32",
               "size": [768, 576], "detections": [[1.0, 2.0, 30.5, 40.0, 0.9, 0]]}
    payload.update(override)
    return payload


LONGEST_PREFIX = b"det." + b"t" * NAME_BYTES + b"." + b"c" * NAME_BYTES   # a whole topic
