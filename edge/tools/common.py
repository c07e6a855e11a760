"""Shared helpers of the model tools: the task's inputs (its preprocessing of a frame, a model's input shape)."""
from __future__ import annotations

from typing import Any

import numpy as np

from edge.errors import EngineError


def input_tensor(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The detector's preprocessing of one frame into a fresh [1,3,H,W] float32 tensor."""
    from edge.letterbox import letterbox_into

    out = np.empty(shape, np.float32)
    letterbox_into(image, out)
    return out


def input_shape(model: Any) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims)
    if len(shape) != 4 or 0 in shape or shape[1] != 3:
        raise EngineError(f"model input {model.graph.input[0].name} has shape {shape};"
                          " the tools need a fixed [1, 3, H, W] image input")
    return shape
