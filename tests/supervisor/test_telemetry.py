"""Opening telemetry (edge/supervisor/telemetry/__init__.py): every URI form, the auto choice and why it skipped
each source, the URIs refused. The readers' own tests are in tests/supervisor/telemetry/. No test sleeps: time
is a FakeClock."""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from edge.errors import EdgeError
from edge.supervisor.telemetry import open_reader
from edge.supervisor.telemetry.common import NoneReader, Sample, TelemetryError
from edge.supervisor.telemetry.jtop import JtopReader
from edge.supervisor.telemetry.nvml import NvmlReader
from edge.supervisor.telemetry.sysfs import SysfsReader
from edge.supervisor.telemetry.trace import TraceReader
from tests.support.telemetry import HEATING, SERVICE_DOWN, FakeClock, ina3221, make_pynvml, write, write_trace


def test_auto_prefers_jtop(jtop_stand_in: types.ModuleType, orin_nx: Path, telemetry_log) -> None:
    reader = open_reader("auto", root=orin_nx)
    assert isinstance(reader, JtopReader)
    assert telemetry_log.messages() == ["telemetry auto: jtop"]


def test_auto_falls_back_to_sysfs_when_the_jtop_service_is_down(
        jtop_stand_in: types.ModuleType, orin_nx: Path, telemetry_log) -> None:
    jtop_stand_in.jtop.start_error = jtop_stand_in.JtopException(SERVICE_DOWN)
    reader = open_reader("auto", root=orin_nx)
    assert isinstance(reader, SysfsReader) and reader.root == orin_nx
    assert reader.read().temps_c["tj"] == 48.5
    assert telemetry_log.messages(logging.INFO) == [(
        "telemetry auto: sysfs; skipped jtop: the jtop service cannot be reached (JtopException: The "
        "jtop.service is not active. Please run: sudo jtop --install-service)")]


def test_auto_falls_back_to_none_and_says_why_each_was_skipped(
        tmp_path: Path, no_jtop: None, no_pynvml: None, telemetry_log) -> None:
    """On a Jetson no telemetry is a fault (the supervisor cannot follow the heat): a warning with every why."""
    ina3221(tmp_path, "1-0040", "hwmon0", {1: ("VDD_IN", 5000, 100)})       # rails alone are not enough
    write(tmp_path / "etc" / "nv_tegra_release", "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    reader = open_reader("auto", root=tmp_path)
    assert isinstance(reader, NoneReader) and reader.read().source == "none"
    [message] = telemetry_log.messages(logging.WARNING)
    assert message == (
        "telemetry auto: none, no temperatures or power; skipped "
        "jtop: jtop telemetry requested but `from jtop import jtop` failed (import of jtop halted; None in "
        f"sys.modules); sysfs: no thermal zone under {tmp_path} (rails: VDD_IN); "
        "nvml: NVML telemetry requested but `import pynvml` failed (import of pynvml halted; None in sys.modules)")


def test_auto_on_a_pc_without_sensors_says_so_in_one_short_info_line(
        tmp_path: Path, no_jtop: None, no_pynvml: None, telemetry_log) -> None:
    """Issue 16, item 18: a PC without sensors is not a fault; the 600-character warning went into the demo's
    live table at every start. One short info line; the whys at debug."""
    reader = open_reader("auto", root=tmp_path)
    assert isinstance(reader, NoneReader)
    assert telemetry_log.messages(logging.WARNING) == []
    [line] = telemetry_log.messages(logging.INFO)
    assert line == ("telemetry auto: none here (not a Jetson; no jtop, thermal zone or NVML): the supervisor holds"
                    " NORMAL")
    assert any("skipped jtop: jtop telemetry requested" in m and "nvml: NVML telemetry requested" in m
               for m in telemetry_log.messages(logging.DEBUG))


def test_open_reader_opens_every_form(tmp_path: Path, orin_nx: Path, jtop_stand_in: types.ModuleType,
                                      monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml())
    trace = write_trace(tmp_path / "t.jsonl", HEATING)
    monkeypatch.chdir(tmp_path)
    forms = {
        "none": NoneReader, "auto": JtopReader, "jtop": JtopReader, "nvml": NvmlReader,
        "sysfs": SysfsReader, f"sysfs://{orin_nx}": SysfsReader,
        f"trace://{trace}": TraceReader, "trace://t.jsonl": TraceReader,
    }
    for uri, kind in forms.items():
        with open_reader(uri, root=orin_nx, clock=clock) as reader:
            assert type(reader) is kind, uri
            assert reader.read().source == kind.name
            assert reader.read().t == (0.0 if kind is TraceReader else 1000.0)
    assert open_reader(f"sysfs://{orin_nx}").root == orin_nx
    assert open_reader("sysfs", root=orin_nx).root == orin_nx


def test_open_reader_does_not_fall_back_when_a_source_is_named(jtop_stand_in: types.ModuleType,
                                                                tmp_path: Path) -> None:
    jtop_stand_in.jtop.start_error = jtop_stand_in.JtopException(SERVICE_DOWN)
    with pytest.raises(TelemetryError, match="the jtop service cannot be reached"):
        open_reader("jtop")
    with pytest.raises(TelemetryError, match="no thermal zone and no INA3221 rail"):
        open_reader(f"sysfs://{tmp_path}")
    with pytest.raises(TelemetryError, match="cannot be opened"):
        open_reader(f"trace://{tmp_path}/missing.jsonl")


@pytest.mark.parametrize(("uri", "why"), [
    ("", "unknown source"),
    ("AUTO", "unknown source"),
    (" none", "unknown source"),
    ("tegrastats", "unknown source"),
    ("sysfs://", "it names no path"),
    ("trace://", "it names no path"),
    ("trace:///tmp/heat.jsonl?speed=2", "telemetry URIs take no parameters"),
    ("trace:///tmp/heat.jsonl#1", "telemetry URIs take no parameters"),
    ("file:///tmp/heat.jsonl", "unknown source 'file'"),
    ("jtop://", "unknown source 'jtop'"),
    ("nvml:///", "unknown source 'nvml'"),
])
def test_open_reader_refuses_a_bad_uri(uri: str, why: str) -> None:
    with pytest.raises(TelemetryError) as caught:
        open_reader(uri)
    assert isinstance(caught.value, EdgeError)
    assert caught.value.what == f"telemetry URI {uri!r} is not valid: {why}"
    assert caught.value.note == f"got {uri!r}"
    assert caught.value.hint == ("use one of: auto, none, jtop, sysfs, sysfs:///ROOT, nvml, trace:///PATH.jsonl")


def test_none_reader(clock: FakeClock) -> None:
    with NoneReader(clock=clock) as reader:
        assert reader.read() == Sample(t=1000.0, source="none")
