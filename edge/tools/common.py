"""Shared helpers of the model tools: loading ONNX with clear errors, atomic writes, the task's inputs."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge.engines.repository import atomic_path
from edge.errors import EngineError


def load_onnx(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise EngineError(f"ONNX file does not exist: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError... for broken files
        raise EngineError(f"cannot load ONNX model {path}: {str(exc).strip()[:300]}",
                          hint="the file is truncated or not an ONNX model; rebuild it") from exc
    return model


def check_writable(path: Path) -> None:
    """Fail before any long work when the output cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EngineError(f"output directory does not exist: {parent}", hint="create it first")
    if path.is_dir():
        raise EngineError(f"output path is a directory: {path}", hint="name the output file, e.g. model.int8.qdq.onnx")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EngineError(f"output path is not writable: {path}", hint="choose another path or fix permissions")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` only when the block succeeds."""
    check_writable(path)
    with atomic_path(path) as tmp:
        yield tmp


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
