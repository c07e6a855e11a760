"""INT8 Q/DQ variant for TensorRT's explicit quantization: symmetric int8 activations (per tensor)
and weights (per output channel), calibrated with the task's own preprocessing (ONNX Runtime's
static quantization in QDQ format)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.engines.repository import atomic_output, load_onnx
from edge.errors import EngineError
from edge.tools.common import input_shape, input_tensor
from edge.tools.data import Sample

Method = Literal["entropy", "minmax", "percentile"]


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    frames: int
    method: str
    quantized_nodes: int
    excluded: list[str]


# ONNX Runtime's calibrators keep every intermediate tensor of every frame they are fed at once
# (about 80 MB a frame for YOLOv3-tiny: 300 frames ran a 24 GB machine out of memory). Feeding
# them chunks of at most this many frames keeps memory flat; histograms and ranges accumulate.
CHUNK_FRAMES = 8


def chunk_size(count: int) -> int:
    """The largest divisor of `count` up to CHUNK_FRAMES (ONNX Runtime needs equal chunks)."""
    return max(d for d in range(1, min(CHUNK_FRAMES, count) + 1) if count % d == 0)


class _Reader:
    """CalibrationDataReader preprocessing frames as they are read, in ranges, with a progress bar."""

    def __init__(self, name: str, samples: list[Sample], shape: tuple[int, ...], progress: bool) -> None:
        from tqdm import tqdm

        self._name = name
        self._samples = samples
        self._shape = shape
        self._position, self._end = 0, len(samples)
        self._bar = tqdm(total=len(samples), desc="calibrating", unit="frame", leave=False,
                         disable=None if progress else True)      # None: a bar on a terminal only

    def __len__(self) -> int:
        return len(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._position, self._end = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= self._end:
            if self._end == len(self._samples):
                self._bar.close()
            return None
        tensor = input_tensor(self._samples[self._position].image, self._shape)
        self._position += 1
        self._bar.update()
        return {self._name: tensor}


def quantize(src: Path, dst: Path, calibration: list[Sample], *, method: Method = "percentile",
             exclude: list[str] | None = None, progress: bool = True) -> QuantizeReport:
    """Write the INT8 Q/DQ variant of `src` calibrated on `calibration` frames to `dst` (atomically)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise EngineError("INT8 quantization needs onnxruntime's quantization tools",
                          hint="pip install 'edge[tools]'") from exc
    if not calibration:
        raise EngineError("the calibration set is empty", hint="pass videos, images or folders with --calib")
    model = load_onnx(src)
    shape = input_shape(model)
    nodes = {n.name for n in model.graph.node}
    unknown = sorted(set(exclude or []) - nodes)
    if unknown:
        raise EngineError(f"--exclude names nodes that are not in {src}: {unknown}",
                          note=f"nodes: {', '.join(sorted(nodes)[:12])}{' ...' if len(nodes) > 12 else ''}")
    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    reader = _Reader(model.graph.input[0].name, calibration, shape, progress)
    with atomic_output(dst) as tmp, _quiet(), tempfile.TemporaryDirectory(prefix="edge-quantize-") as private:
        # ONNX Runtime writes "<model>-inferred.onnx" beside the model it is given and deletes it at the
        # end: two runs on one source raced on that file. Give it a link in a directory of our own.
        source = Path(private) / src.name
        source.symlink_to(src.resolve())
        quantize_static(str(source), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=list(exclude or []),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False,    # TensorRT takes int8 Q/DQ, float bias
                                       "CalibStridedMinMax": chunk_size(len(calibration))})
        quantized = sum(1 for n in load_onnx(tmp).graph.node if n.op_type == "QuantizeLinear")
    return QuantizeReport(len(calibration), method, quantized, sorted(exclude or []))


class _quiet:
    """ONNX Runtime's quantizer logs advice through the root logger and prints its steps on stdout
    ("Collecting tensor data ..."); our progress bar and result lines replace both."""

    def __enter__(self) -> None:
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)
        logging.getLogger().setLevel(self._level)
