"""Jetson tier: real TensorRT on the board. Builds the demo variants into plans and runs them."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

from edge.config.schema import TaskConfig
from edge.engines import repository
from edge.engines.tensorrt import build
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.engines.tensorrt.plan import device_key
from edge.tasks import build_task

pytestmark = pytest.mark.jetson

CONFIG = TaskConfig(name="objects", type="detector", model="unused", cameras=["c"])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_plan_builds_resolves_and_detects(demo, tmp_path: Path, precision: str) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo.engines, repo)
    result = build.build(repo / demo.variant(precision).name, timing_cache=tmp_path / "timing.cache",
                         say=lambda line: None)
    manifest = repository.Manifest.load(repo)
    choice = repository.resolve(manifest, precision, device=device_key(), allow_onnx=False)
    assert choice.format == "plan" and choice.path == result.plan
    with TensorRTEngine(result.plan, precision=precision) as engine:
        task = build_task(CONFIG, engine)
        slot = engine.create_slot("dog", depth=2)
        buf = slot.input()
        meta = task.preprocess(cv2.imread(str(demo.image("dog.jpg"))), buf)
        found = {task.labels[int(r[5])] for r in task.postprocess(slot.submit(buf).wait(10), meta)}
        assert {"dog", "bicycle"} <= found
