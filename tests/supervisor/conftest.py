"""Fixtures of the telemetry readers' tests: a clock moved by hand, the telemetry logger's records, an Orin NX's
sysfs tree, the jetson-stats stand-in, and sources made to fail at import."""
from __future__ import annotations

import json
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.telemetry import (
    MAINLINE_TRIPS,
    ORIN_NX_JTOP,
    FakeClock,
    Records,
    devfreq_gpu,
    ina3221,
    make_jtop_module,
    zone,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def telemetry_log() -> Iterator[Records]:
    logger = logging.getLogger("edge.telemetry")
    records, level = Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)


@pytest.fixture
def no_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import pynvml` fails, here and on the GPU machine alike (auto would otherwise pick NVML there)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


@pytest.fixture
def no_jtop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jtop", None)


@pytest.fixture
def orin_nx(tmp_path: Path) -> Iterator[Path]:
    """A sysfs tree as on an Orin NX. cv0 is power-gated: its `temp` is a FIFO whose writer the fixture holds
    open, so the reader's non-blocking read really fails with EAGAIN, as a gated zone's does. cv1's temp holds
    garbage, cv2's is a directory (EISDIR). The INA3221 sits at hwmon3 (the index varies between boots), with
    the driver's "sum of shunt voltages" channel 7 (given a current here too, so only its name skips it) and a
    second chip with an NC channel."""
    root = tmp_path / "orin-nx"
    zone(root, 0, "cpu-thermal", "47250", MAINLINE_TRIPS)
    zone(root, 1, "gpu-thermal", "45500", MAINLINE_TRIPS)
    cv0 = zone(root, 2, "cv0-thermal", None, MAINLINE_TRIPS)
    os.mkfifo(cv0 / "temp")
    writer = os.open(cv0 / "temp", os.O_RDWR | os.O_NONBLOCK)
    zone(root, 3, "cv1-thermal", "garbage\x07")
    (zone(root, 4, "cv2-thermal", None) / "temp").mkdir()
    zone(root, 5, "soc0-thermal", "46000")
    zone(root, 10, "tj-thermal", "48500", (*MAINLINE_TRIPS, ("passive", 95500)))
    ina3221(root, "1-0040", "hwmon3", {1: ("VDD_IN", 5000, 880), 2: ("VDD_CPU_GPU_CV", 5000, 240),
                                       3: ("VDD_SOC", 5000, 260), 7: ("sum of shunt voltages", 120, 24)})
    ina3221(root, "1-0041", "hwmon7", {1: ("NC", 5000, 100)})
    devfreq_gpu(root, "15340000.vic", "vic", "999")
    devfreq_gpu(root, "17000000.gpu", "gpu", "345")
    yield root
    os.close(writer)


@pytest.fixture
def jtop_stand_in(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = make_jtop_module(json.loads(json.dumps(ORIN_NX_JTOP)))
    monkeypatch.setitem(sys.modules, "jtop", module)
    return module
