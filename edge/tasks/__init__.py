"""Perception task types: preprocessing spec and postprocessing per type, with labels."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edge.config.schema import TaskConfig
from edge.engines.base import Engine, Preprocessing


class Task(Protocol):
    """What a lane needs from a task type: one image at a time (a lane per camera), or a list of images
    that run as one batch (a batched lane, `batch: true`), image i in row i of the input and outputs."""

    labels: list[str]
    preprocessing: Preprocessing        # what preprocess() does, named for a backend that runs it itself

    def preprocess(self, image: np.ndarray, out: np.ndarray) -> Any:
        """Write the network input for `image` into `out`; return what postprocess needs."""

    def postprocess(self, outputs: dict[str, np.ndarray], meta: Any) -> np.ndarray:
        """Detections [N, 6] = x1, y1, x2, y2, score, class_id in source pixels."""

    def preprocess_batch(self, images: list[np.ndarray], out: np.ndarray) -> list[Any]:
        """Write the input of images[i] into row i of `out` (rows beyond them are left as they are); return
        what postprocess_batch needs, one item per image."""

    def postprocess_batch(self, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[np.ndarray]:
        """The detections of each image, from row i of the outputs (which hold at least len(metas) rows)."""


def _types() -> dict[str, Any]:
    from edge.tasks.detector import YoloDetector

    return {"detector": YoloDetector}


def preprocessing_of(config: TaskConfig) -> Preprocessing:
    """The preprocessing that tasks of `config.type` name: the engine factory hands it to the backends, and a slot
    that knows it runs it on raw frames (TensorRT: on the GPU)."""
    return _types()[config.type].preprocessing


def build_task(config: TaskConfig, engine: Engine) -> Task:
    """The task implementation for `config.type`, checked against the active engine's tensors."""
    return _types()[config.type].from_engine(config, engine)
