"""The engine factory's backend choice (`backend: auto|tensorrt|onnxruntime`) and plans built on first use.
TensorRT itself is the stand-in of tests/support/fake_tensorrt.py (a contract test: it follows TensorRT's documented
Python API); the repository, its manifest and the ONNX variants are the demo's real ones."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.config.schema import TaskConfig
from edge.engines import factory, repository
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.errors import EngineError
from edge.tasks import preprocessing_of


def task(repo: Path, **fields: Any) -> TaskConfig:
    return TaskConfig(name="objects", type="detector", engines=str(repo), cameras=["c"], **fields)


def variants_for(config: TaskConfig) -> factory.Variants:
    return factory.variants_for(config, threads=1, preprocessing=preprocessing_of(config))


@pytest.fixture
def repo(demo: Any, tmp_path: Path) -> Path:
    root = tmp_path / "yolov3-tiny"
    shutil.copytree(demo.engines, root)
    return root


def test_auto_runs_onnxruntime_where_tensorrt_is_missing_and_says_why(repo: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="edge.engine"):
        variants = variants_for(task(repo))
    assert all(isinstance(e, OnnxRuntimeEngine) for e in variants.engines.values())
    assert "task objects: onnxruntime (auto: TensorRT is not installed here)" in caplog.text


def test_backend_tensorrt_without_tensorrt_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(EngineError, match="backend tensorrt, but TensorRT is not installed here") as info:
        variants_for(task(repo, backend="tensorrt"))
    assert "python3-libnvinfer" in str(info.value)


def test_auto_builds_the_missing_plans_once_and_runs_them(trt, repo: Path,  # noqa: F811
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="edge.engine"):
        variants = variants_for(task(repo))
    assert {p: type(e) for p, e in variants.engines.items()} == {p: TensorRTEngine for p in ("fp32", "fp16", "int8")}
    assert caplog.text.count("building the") == 3 and "auto: TensorRT" in caplog.text
    plans = {v.precision for v in repository.Manifest.load(repo).variants if v.format == "plan"}
    assert plans == {"fp32", "fp16", "int8"}                       # kept in the repository
    caplog.clear()
    with caplog.at_level("INFO", logger="edge.engine"):
        again = variants_for(task(repo))
    assert "building the" not in caplog.text and set(again.engines) == {"fp32", "fp16", "int8"}


def test_onnxruntime_in_the_config_ignores_plans(trt, repo: Path) -> None:  # noqa: F811
    variants_for(task(repo))                                      # plans built
    variants = variants_for(task(repo, backend="onnxruntime"))
    assert all(isinstance(e, OnnxRuntimeEngine) for e in variants.engines.values())


def test_a_failed_build_falls_back_under_auto_and_is_unavailable_under_tensorrt(
        trt, repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    def failing(onnx: Path, **options: Any) -> None:
        raise EngineError("TensorRT could not build the plan", note="out of memory")
    monkeypatch.setattr("edge.engines.tensorrt.build.build", failing)
    with caplog.at_level("ERROR", logger="edge.engine"):
        variants = variants_for(task(repo))
    assert all(isinstance(e, OnnxRuntimeEngine) for e in variants.engines.values())
    assert "the fp32 plan could not be built: TensorRT could not build the plan" in caplog.text
    with pytest.raises(EngineError, match="no variant of yolov3-tiny can run here") as info:
        variants_for(task(repo, backend="tensorrt"))
    assert "no usable fp32 engine" in str(info.value)
