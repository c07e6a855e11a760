"""Run inside `qemu-x86_64 -cpu EPYC-Milan` by tests/engines/test_int8_cpu.py: the demo INT8 variant's
detections on the still images, as edge runs it (edge's session options) and as ONNX Runtime's
defaults run it. Prints one JSON object."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edge.engines import onnxruntime as edge_ort
from edge.tools import data, evaluate


def main() -> None:
    model, images = Path(sys.argv[1]), sys.argv[2:]
    samples, _ = data.load_samples(images, fit_to=(416, 416))
    out = {"saturates": edge_ort.int8_saturates(),
           "edge": [d.tolist() for d in evaluate.candidate_detections(model, samples, progress=False)]}
    default = edge_ort.session_options
    edge_ort.session_options = lambda threads=None, **kw: edge_ort._import_ort().SessionOptions()   # ORT defaults
    try:
        out["ort_defaults"] = [d.tolist() for d in evaluate.candidate_detections(model, samples, progress=False)]
    finally:
        edge_ort.session_options = default
    print(json.dumps(out))


if __name__ == "__main__":
    main()
