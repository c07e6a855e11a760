"""The jtop reader (edge/supervisor/telemetry/jtop.py) against a stand-in that follows the jetson-stats API (a
contract test): readings, missing parts, the service down at open and the connection lost later."""
from __future__ import annotations

import json
import sys
import types

import pytest

from edge.errors import UsageError
from edge.supervisor.telemetry.common import Sample, TelemetryError
from edge.supervisor.telemetry.jtop import JtopReader
from tests.support.telemetry import ORIN_NX_JTOP, SERVICE_DOWN, FakeClock, make_jtop_module


def test_jtop_reader_follows_the_jetson_stats_api(jtop_stand_in: types.ModuleType, clock: FakeClock) -> None:
    """Contract test: the stand-in serves the structures jetson-notes 5.1 documents for jetson-stats 7.2
    (temperature with online/temp and -256 offline, power rail/tot in mW with the input rail under tot's name,
    gpu['gpu']['status']['load'] in percent, nvpmodel.name); the reader maps them onto Sample."""
    reader = JtopReader(clock=clock)
    sample = reader.read()
    assert sample == Sample(
        t=1000.0, source="jtop",
        temps_c={"cpu": 47.25, "gpu": 45.5, "soc0": 46.0, "tj": 48.5, "nvme": 38.85},
        trips_c={"nvme": {"hot": 81.85, "critical": 84.85}},
        power_mw={"VDD_CPU_GPU_CV": 1200.0, "VDD_SOC": 1300.0, "VDD_IN": 4400.0},
        total_mw=4400.0, mode="15W", gpu_load=0.345, problems=("zone cv0: offline",))
    client = jtop_stand_in.jtop.instances[-1]
    reader.close()
    assert client.closed
    with pytest.raises(UsageError):
        reader.read()


def test_jtop_reader_takes_the_gpu_by_any_name_and_tolerates_missing_parts(
        jtop_stand_in: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(json.dumps(ORIN_NX_JTOP))
    data["gpu"] = {"ga10b": data["gpu"]["gpu"]}
    data["power"] = {}                                         # jtop's power when the board has no sensor
    data["nvpmodel"] = None
    monkeypatch.setitem(sys.modules, "jtop", make_jtop_module(data))
    sample = JtopReader().read()
    assert sample.gpu_load == 0.345 and sample.power_mw == {} and sample.total_mw is None and sample.mode is None


def test_jtop_service_down_is_a_clear_error_at_open(jtop_stand_in: types.ModuleType) -> None:
    jtop_stand_in.jtop.start_error = jtop_stand_in.JtopException(SERVICE_DOWN)
    with pytest.raises(TelemetryError) as caught:
        JtopReader()
    error = caught.value
    assert error.what == "the jtop service cannot be reached"
    assert error.note == "JtopException: The jtop.service is not active. Please run: sudo jtop --install-service"
    assert "SupplementaryGroups=jtop" in error.hint and "falls back to sysfs" in error.hint


def test_jtop_not_installed_is_a_clear_error(no_jtop: None) -> None:
    with pytest.raises(TelemetryError) as caught:
        JtopReader()
    assert caught.value.what == "jtop telemetry requested but `from jtop import jtop` failed"
    assert "jetson-stats" in caught.value.hint


def test_jtop_connection_lost_later_is_reported_not_raised(jtop_stand_in: types.ModuleType) -> None:
    reader = JtopReader()
    jtop_stand_in.jtop.instances[-1]._error = jtop_stand_in.JtopException("Lost connection with jtop server")
    sample = reader.read()
    assert sample.problems == ("jtop: connection lost: JtopException: Lost connection with jtop server",)
    assert sample.temps_c == {} and sample.power_mw == {} and sample.total_mw is None
    jtop_stand_in.jtop.instances[-1]._error = None
    jtop_stand_in.jtop.instances[-1]._running = False
    assert reader.read().problems == ("jtop: the client has stopped",)
