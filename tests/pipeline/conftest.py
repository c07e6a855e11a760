"""Fixtures of the camera readers' tests: the PyNvVideoCodec stand-in, and the asset cache the test clips live in."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture
def nvc(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """PyNvVideoCodec's stand-in (tests/support/fake_nvcodec.py, which needs PyAV) and CUDA's, for one test."""
    from tests.support import fake_nvcodec

    yield from fake_nvcodec.installed(monkeypatch)


@pytest.fixture(scope="module")
def cache(demo: Any) -> Path:
    """The asset cache: the demo's vtest.avi, and the clips tests/support/clips.py makes of it."""
    return demo.root
