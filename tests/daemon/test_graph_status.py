"""`edge status` says per lane which frames run as CUDA graphs: the whole daemon on the stand-in TensorRT and CUDA
(tests/support/fake_tensorrt.py, tests/support/fake_cuda.py), with `cuda_graph` left at its default (auto), off,
and with a capture that CUDA invalidates; the status snapshot's lanes and the text `edge status` prints."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge.cli.display import status_table
from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.engines import repository
from edge.engines.tensorrt import build
from tests.support import fake_cuda
from tests.support.lanes import YOLO
from tests.support.models import conv_model

FAILED = ("failed: CUDA graph capture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (some work enqueued during"
          " capture cannot run in a graph)")


def _repo(root: Path) -> Path:
    """An engine repository of the detector's layout with a plan built here (by the stand-in)."""
    root.mkdir()
    onnx = conv_model(root / "m.onnx", input_shape=[1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=YOLO)
    repository.Manifest(root, "m", [repository.Variant("fp32", "onnx", "m.onnx", repository.sha256_file(onnx))]).save()
    build.build(onnx, say=lambda line: None)
    return root


@pytest.mark.parametrize(("setting", "fail_capture", "expected"), [
    ("", False, "on"),                                      # the default: auto
    ("    cuda_graph: false\n", False, "off: cuda_graph: false"),
    ("", True, FAILED),
])
def test_status_says_per_lane_which_frames_run_as_graphs(trt_ledger: fake_cuda.Ledger, tmp_path: Path, setting: str,
                                                         fail_capture: bool, expected: str) -> None:
    trt_ledger.fail_capture = fail_capture
    text = (f"version: 1\ncameras:\n  - id: c0\n    uri: test://bars?size=64x48&realtime=0\n"
            f"  - id: c1\n    uri: test://bars?size=96x64&realtime=0\ntasks:\n  - name: t\n    type: detector\n"
            f"    engines: {_repo(tmp_path / 'repo')}\n    allow_onnx: false\n    cameras: [c0, c1]\n{setting}"
            f"output:\n  results: ipc://{tmp_path}/r.sock\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=3)
    service.start()
    try:
        assert service.tasks["t"].active().backend == "tensorrt"
        assert service.run(threading.Event()) == 0
        status = service.status()
    finally:
        service.stop()
    assert [(lane["camera"], lane["graphs"]) for lane in status["lanes"]] == [("c0", expected), ("c1", expected)]
    table = status_table(status)
    header = next(line for line in table.splitlines() if "LANE" in line)
    assert header.rstrip().endswith("RUNNING  CUDA GRAPHS")
    assert sum(line.rstrip().endswith(expected) for line in table.splitlines()) == 2
