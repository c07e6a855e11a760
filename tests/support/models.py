"""Small real ONNX models made with onnx.helper, for engine and task error paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_model(path: Path, *, input_shape: list[int], out_channels: int, stride: int, yolo_meta: dict | None = None,
               n_outputs: int = 1, weight: float = 0.01) -> Path:
    """images -> Conv(k=1, stride, every weight `weight`) -> `n_outputs` outputs; optional edge.yolo metadata."""
    weight = numpy_helper.from_array(np.full((out_channels, input_shape[1], 1, 1), weight, np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["y"], strides=[stride, stride])]
    outputs = []
    h, w = input_shape[2] // stride, input_shape[3] // stride
    for i in range(n_outputs):
        nodes.append(helper.make_node("Identity", ["y"], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, out_channels, h, w]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
                              outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if yolo_meta is not None:
        helper.set_model_props(model, {"edge.yolo": json.dumps(yolo_meta)})
    onnx.save(model, str(path))
    return path


def make_dynamic(path: Path, dims: dict[str, int]) -> Path:
    """Turn axis `dims[name]` of graph input/output `name` into a named dynamic dimension, in place."""
    model = onnx.load(str(path))
    for tensor in list(model.graph.input) + list(model.graph.output):
        if tensor.name in dims:
            tensor.type.tensor_type.shape.dim[dims[tensor.name]].dim_param = f"{tensor.name}_dim{dims[tensor.name]}"
    onnx.save(model, str(path))
    return path


def set_batch(path: Path, batch: int | None) -> Path:
    """Make the first dimension of every graph input and output `batch` (None: a symbolic `batch` dimension,
    which ONNX Runtime runs at any batch), in place: a conv_model made batch-capable."""
    model = onnx.load(str(path))
    for tensor in list(model.graph.input) + list(model.graph.output):
        dim = tensor.type.tensor_type.shape.dim[0]
        if batch is None:
            dim.dim_param = "batch"
        else:
            dim.dim_value = batch
    onnx.save(model, str(path))
    return path
