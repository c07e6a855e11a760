"""Fixtures of the GPU preprocessing tests: the demo's images and video from the asset cache, the CUDA context,
and `device`: the GPU, or the letterbox kernels compiled for this CPU on the CUDA stand-in
(tests/support/host_kernels.py)."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.engines.repository import sha256_file
from edge.files import default_cache_dir
from edge.tools import assets as edge_assets
from tests.support import host_kernels


def _assets(request: pytest.FixtureRequest, prefix: str) -> dict[str, Path]:
    """The demo assets under `prefix`: from the cache when they verify there (the GPU machine gets them copied
    in, it has no network), else through the `demo` fixture."""
    wanted = [a for a in edge_assets.ASSETS if a.path.startswith(prefix)]
    root = default_cache_dir()
    if not all((root / a.path).is_file() and sha256_file(root / a.path) == a.sha256 for a in wanted):
        root = request.getfixturevalue("demo").root
    return {Path(a.path).name: root / a.path for a in wanted}


@pytest.fixture(scope="session")
def stills(request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    """The demo's still images."""
    return {name: cv2.imread(str(path)) for name, path in _assets(request, "images/").items()}


@pytest.fixture(scope="session")
def vtest_frame(request: pytest.FixtureRequest) -> np.ndarray:
    """Frame 100 of the demo video (768x576 BGR): a real camera's picture, people and all."""
    capture = cv2.VideoCapture(str(_assets(request, "media/vtest.avi")["vtest.avi"]))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok:
        raise AssertionError("OpenCV read no frame 100 of vtest.avi")
    return frame


@pytest.fixture(scope="module")
def context() -> Iterator[Any]:
    from edge.gpu import cuda

    context = cuda.Context(0)
    yield context
    context.detach()


@pytest.fixture
def gpu(context: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The context current for the test; the kernel cache in a temporary directory (one per session)."""
    from edge.gpu import cuda

    cache = tmp_path_factory.getbasetemp() / "kernels"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*out-of-thread context could not be cleaned up")
        with context.current():
            stream = cuda.Stream()
            yield cuda, stream, cache
            stream.free()


@pytest.fixture(scope="session")
def host_library(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The letterbox kernels built for this CPU, once a session."""
    return host_kernels.build(tmp_path_factory.mktemp("host_kernels"))


@pytest.fixture(params=["host", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    """(edge.gpu.cuda, a stream, the kernel cache) with the context current: on the CUDA stand-in with the
    kernels compiled for this CPU, or on the GPU."""
    if request.param == "gpu":
        yield request.getfixturevalue("gpu")
        return
    ledger = host_kernels.install(monkeypatch, request.getfixturevalue("host_library"))
    from edge.gpu import cuda

    context = cuda.Context(0)
    with context.current():
        stream = cuda.Stream()
        yield cuda, stream, None
        stream.free()
    context.detach()
    assert ledger.live == {}
