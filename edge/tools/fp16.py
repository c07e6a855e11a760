"""FP16 variant: weights and compute in float16, inputs and outputs kept float32 (onnxconverter-common)."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from edge.engines.repository import atomic_output, load_onnx
from edge.errors import EngineError
from edge.tools.common import input_shape, input_tensor

# Tolerance relative to the largest fp32 output: fp16 keeps 11 significant bits, and the YOLO heads'
# raw outputs (up to ~26 on real images) came within 0.3 % of fp32. Detections are what matter:
# `edge model evaluate` gates them.
MAX_REL_DIFF = 0.01


@dataclasses.dataclass(frozen=True)
class Fp16Report:
    max_abs_diff: float
    max_abs_output: float
    frames: int


def convert(src: Path, dst: Path, *, check_images: list[np.ndarray]) -> Fp16Report:
    """Write the FP16 variant of `src` to `dst`, then compare it with fp32 on `check_images`."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EngineError("FP16 conversion needs onnxconverter-common", hint="pip install 'edge[tools]'") from exc
    import onnx

    model = load_onnx(src)
    shape = input_shape(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "number truncated to 1e-07" for each tiny weight
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    with atomic_output(dst) as tmp:
        onnx.save(half, str(tmp))
        report = compare(src, tmp, [input_tensor(image, shape) for image in check_images])
        if report.max_abs_diff > MAX_REL_DIFF * report.max_abs_output:
            raise EngineError(f"FP16 variant differs from fp32 by {report.max_abs_diff:.4f}, more than"
                              f" {MAX_REL_DIFF:.0%} of the largest fp32 output ({report.max_abs_output:.2f})",
                              hint="the model overflows in fp16; keep it fp32 or exclude the layers that overflow")
    return report


def compare(reference: Path, candidate: Path, tensors: list[np.ndarray]) -> Fp16Report:
    import onnxruntime as ort

    from edge.engines.onnxruntime import session_options

    ref = ort.InferenceSession(str(reference), session_options(), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(candidate), session_options(), providers=["CPUExecutionProvider"])
    name = ref.get_inputs()[0].name
    diff = magnitude = 0.0
    for tensor in tensors:
        for a, b in zip(ref.run(None, {name: tensor}), cand.run(None, {name: tensor})):
            diff = max(diff, float(np.abs(a - b.astype(np.float32)).max()))
            magnitude = max(magnitude, float(np.abs(a).max()))
    return Fp16Report(diff, magnitude, len(tensors))
