"""Telemetry readers (edge/supervisor/telemetry/): sysfs against a tree laid out as on an Orin NX, jtop against a
stand-in that follows the jetson-stats API (a contract test), trace replay on an injected clock, every URI form,
and NVML for real on the GPU tier. No test sleeps: time is a FakeClock."""
from __future__ import annotations

import json
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.errors import EdgeError, UsageError
from edge.supervisor.telemetry import open_reader
from edge.supervisor.telemetry.common import NoneReader, Sample, TelemetryError
from edge.supervisor.telemetry.jtop import JtopReader
from edge.supervisor.telemetry.nvml import NvmlReader
from edge.supervisor.telemetry.sysfs import SysfsReader
from edge.supervisor.telemetry.trace import TRACE_MAX_BYTES, TRACE_MAX_LINE_BYTES, TraceReader


class FakeClock:
    """time.monotonic stand-in: tests move `now` by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Records(logging.Handler):
    """The records of one logger, caught on that logger itself: caplog listens at the root, which edge's
    records no longer reach once setup_logging ran in this session."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= level]


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


# ------------------------------------------------------------------------------------------------ sysfs trees


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def zone(root: Path, index: int, kind: str, temp: str | None, trips: tuple[tuple[str, int], ...] = ()) -> Path:
    """sys/class/thermal/thermal_zone<index> with its type, temp (m°C) and trip_point_N_type/_temp files."""
    path = root / "sys" / "class" / "thermal" / f"thermal_zone{index}"
    write(path / "type", f"{kind}\n")
    if temp is not None:
        write(path / "temp", f"{temp}\n")
    for n, (trip_kind, trip_temp) in enumerate(trips):
        write(path / f"trip_point_{n}_type", f"{trip_kind}\n")
        write(path / f"trip_point_{n}_temp", f"{trip_temp}\n")
    return path


def ina3221(root: Path, device: str, hwmon: str, channels: dict[int, tuple[str, int, int | None]]) -> Path:
    """An INA3221 under sys/bus/i2c/drivers/ina3221/<device>/hwmon/<hwmon>: channel -> (label, mV, mA)."""
    path = root / "sys" / "bus" / "i2c" / "drivers" / "ina3221" / device / "hwmon" / hwmon
    write(path / "name", "ina3221\n")
    for n, (label, millivolts, milliamps) in channels.items():
        write(path / f"in{n}_label", f"{label}\n")
        write(path / f"in{n}_input", f"{millivolts}\n")
        if milliamps is not None:
            write(path / f"curr{n}_input", f"{milliamps}\n")
    return path


def devfreq_gpu(root: Path, node: str, of_name: str, load: str) -> None:
    device = root / "sys" / "class" / "devfreq" / node / "device"
    write(device / "of_node" / "name", f"{of_name}\x00")          # device-tree strings end with a NUL
    write(device / "load", f"{load}\n")


MAINLINE_TRIPS = (("passive", 99000), ("critical", 104500))    # T234 device tree: sw-throttle, sw-shutdown


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


ORIN_NX_TRIPS = {"cpu": {"passive": 99.0, "critical": 104.5}, "gpu": {"passive": 99.0, "critical": 104.5},
                 "cv0": {"passive": 99.0, "critical": 104.5}, "tj": {"passive": 95.5, "critical": 104.5}}


def test_sysfs_reads_an_orin_nx_tree(orin_nx: Path, clock: FakeClock) -> None:
    with SysfsReader(orin_nx, clock=clock) as reader:
        assert reader.zones == ("cpu", "gpu", "cv0", "cv1", "cv2", "soc0", "tj")
        assert reader.rails == ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")
        sample = reader.read()
    assert sample == Sample(
        t=1000.0, source="sysfs",
        temps_c={"cpu": 47.25, "gpu": 45.5, "soc0": 46.0, "tj": 48.5},
        trips_c=ORIN_NX_TRIPS,
        power_mw={"VDD_IN": 4400.0, "VDD_CPU_GPU_CV": 1200.0, "VDD_SOC": 1300.0},
        total_mw=4400.0, mode=None, gpu_load=0.345,
        problems=("zone cv0: temp: EAGAIN (Resource temporarily unavailable)",
                  "zone cv1: temp: not a number: 'garbage\\x07'",
                  "zone cv2: temp: EISDIR (Is a directory)"))


def test_sysfs_an_unreadable_zone_is_a_problem_of_that_sample_only(orin_nx: Path, clock: FakeClock) -> None:
    reader = SysfsReader(orin_nx, clock=clock)
    assert "cv0" not in reader.read().temps_c
    writer = os.open(orin_nx / "sys/class/thermal/thermal_zone2/temp", os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"51000\n")                                       # the CV cluster wakes up
    os.close(writer)
    write(orin_nx / "sys/class/thermal/thermal_zone3/temp", "52500\n")
    sample = reader.read()
    assert sample.temps_c["cv0"] == 51.0 and sample.temps_c["cv1"] == 52.5
    assert sample.problems == ("zone cv2: temp: EISDIR (Is a directory)",)
    assert "cv0" not in reader.read().temps_c                           # gated again: EAGAIN again
    reader.close()
    reader.close()


def test_sysfs_names_zones_as_jtop_does_whatever_the_board(tmp_path: Path, telemetry_log) -> None:
    """Zone types are never named in the code: Xavier's upper-case `-therm` and `_tegra` types become jtop's names;
    a name met twice gets the zone's directory; an unreadable type skips the zone with a warning."""
    zone(tmp_path, 0, "CPU-therm", "40500")
    zone(tmp_path, 1, "Tboard_tegra", "35000")
    zone(tmp_path, 2, "thermal-fan-est", "38000")
    zone(tmp_path, 3, "CPU-therm", "41000")
    (zone(tmp_path, 4, "ignored", "39000") / "type").unlink()
    (tmp_path / "sys/class/thermal/thermal_zone4/type").mkdir()
    zone(tmp_path, 5, "-256000", "-256000")                            # a nonsense type, an offline reading
    reader = SysfsReader(tmp_path)
    sample = reader.read()
    assert sample.temps_c == {"CPU": 40.5, "Tboard": 35.0, "thermal": 38.0, "CPU@thermal_zone3": 41.0}
    assert sample.problems == ("zone -256000: temp -256 °C is not plausible (sensor offline?)",)
    assert telemetry_log.messages(logging.WARNING) == [
        "thermal zone thermal_zone4 skipped: its type cannot be read: EISDIR (Is a directory)"]


def test_sysfs_trips_keep_the_lowest_of_a_type_and_drop_disabled_ones(tmp_path: Path) -> None:
    zone(tmp_path, 0, "soc2-thermal", "50000",
         (("active", 70000), ("active", 50000), ("hot", -274000), ("passive", 99000), ("critical", 104500)))
    zone(tmp_path, 1, "tj-thermal", "50000", (("passive", 99000),))
    write(tmp_path / "sys/class/thermal/thermal_zone1/trip_point_0_temp", "n/a\n")
    sample = SysfsReader(tmp_path).read()
    assert sample.trips_c == {"soc2": {"active": 50.0, "passive": 99.0, "critical": 104.5}}
    assert sample.problems == ("zone tj: trip point 0: not a number: 'n/a'",)


def test_one_plausible_range_for_every_reader_and_the_traces(tmp_path: Path) -> None:
    """The readers and traces took −100..250 °C and the policy −60..150 °C, so a zone reading 200 °C was a
    temperature in `edge status` and an offline sensor to the policy. One range now (common.PLAUSIBLE_C): its
    edges are readings, a thousandth of a degree beyond is a problem, and a trace line beyond is malformed."""
    zone(tmp_path, 0, "cpu-thermal", "150000", (("passive", 150000), ("critical", 150001)))
    zone(tmp_path, 1, "gpu-thermal", "150001")
    zone(tmp_path, 2, "soc0-thermal", "-60000")
    zone(tmp_path, 3, "soc1-thermal", "-60001")
    sample = SysfsReader(tmp_path).read()
    assert sample.temps_c == {"cpu": 150.0, "soc0": -60.0} and sample.trips_c == {"cpu": {"passive": 150.0}}
    assert sample.problems == ("zone gpu: temp 150.001 °C is not plausible (sensor offline?)",
                               "zone soc1: temp -60.001 °C is not plausible (sensor offline?)")
    edges = write_trace(tmp_path / "edges.jsonl", [{"t": 0, "temps_c": {"tj": 150, "cv0": -60},
                                                    "trips_c": {"tj": {"passive": 150}}}])
    assert TraceReader(edges).read().temps_c == {"tj": 150.0, "cv0": -60.0}
    for beyond in ({"temps_c": {"tj": 150.5}}, {"temps_c": {"tj": -60.5}}, {"trips_c": {"tj": {"passive": 151}}}):
        with pytest.raises(TelemetryError, match="line 1 is malformed") as caught:
            TraceReader(write_trace(tmp_path / "beyond.jsonl", [{"t": 0, **beyond}]))
        assert "must be a number in -60..150" in caught.value.note


def test_sysfs_total_is_the_input_rail_else_the_sum(tmp_path: Path) -> None:
    """AGX Orin has no VDD_IN: jtop sums its rails, VIN_SYS_5V0 (a 5 V rail, not the module's input) included.
    NC is skipped as a word: a label that merely contains the letters (VDD_SYNC, made up) is a rail."""
    zone(tmp_path, 0, "tj-thermal", "50000")
    ina3221(tmp_path, "1-0040", "hwmon1", {1: ("VDD_GPU_SOC", 19000, 200), 2: ("VDD_CPU_CV", 19000, 100),
                                           3: ("VIN_SYS_5V0", 5000, 900), 7: ("sum of shunt voltages", 300, None)})
    ina3221(tmp_path, "1-0041", "hwmon2", {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 5000, 80),
                                           3: ("VDD_SYNC", 1000, 10)})
    sample = SysfsReader(tmp_path).read()
    assert sample.power_mw == {"VDD_GPU_SOC": 3800.0, "VDD_CPU_CV": 1900.0, "VIN_SYS_5V0": 4500.0,
                               "VDDQ_VDD2_1V8AO": 400.0, "VDD_SYNC": 10.0}
    assert sample.total_mw == 3800.0 + 1900.0 + 4500.0 + 400.0 + 10.0
    assert sample.gpu_load is None and sample.problems == ()


def test_sysfs_an_unreadable_rail_or_gpu_load_is_a_problem(orin_nx: Path) -> None:
    reader = SysfsReader(orin_nx)
    hwmon = orin_nx / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    write(hwmon / "curr2_input", "\n")
    (hwmon / "in3_input").unlink()
    write(orin_nx / "sys/class/devfreq/17000000.gpu/device/load", "1200\n")
    sample = reader.read()
    assert sample.power_mw == {"VDD_IN": 4400.0} and sample.total_mw == 4400.0 and sample.gpu_load is None
    assert sample.problems[-3:] == ("rail VDD_CPU_GPU_CV: curr2_input: not a number: ''",
                                    "rail VDD_SOC: in3_input: ENOENT (No such file or directory)",
                                    "gpu load: 1200 is outside 0..1000")


def test_sysfs_gpu_load_falls_back_to_the_platform_node(tmp_path: Path) -> None:
    zone(tmp_path, 0, "gpu-thermal", "40000")
    write(tmp_path / "sys/devices/platform/gpu.0/load", "0\n")
    assert SysfsReader(tmp_path).read().gpu_load == 0.0


def test_sysfs_refuses_a_root_with_no_zone_and_no_rail(tmp_path: Path) -> None:
    with pytest.raises(TelemetryError) as caught:
        SysfsReader(tmp_path)
    assert caught.value.what == f"no thermal zone and no INA3221 rail under {tmp_path}"
    assert f"{tmp_path}/sys/class/thermal/thermal_zone*" in caught.value.note
    assert "nvml, none or a trace" in caught.value.hint


# ------------------------------------------------------------------------------------------------------- jtop


ORIN_NX_JTOP = {
    "temperature": {
        "cpu": {"online": True, "temp": 47.25}, "cv0": {"online": False, "temp": -256},
        "gpu": {"online": True, "temp": 45.5}, "soc0": {"online": True, "temp": 46.0},
        "tj": {"online": True, "temp": 48.5},
        "nvme": {"online": True, "temp": 38.85, "max": 81.85, "crit": 84.85},         # a hwmon sensor
    },
    "power": {
        "rail": {
            "VDD_CPU_GPU_CV": {"online": True, "type": "INA3221", "status": "ok", "volt": 5000, "curr": 240,
                               "power": 1200, "avg": 1180, "warn": 32760, "crit": 32760},
            "VDD_SOC": {"online": True, "type": "INA3221", "status": "ok", "volt": 5000, "curr": 260,
                        "power": 1300, "avg": 1290, "warn": 32760, "crit": 32760},
        },
        "tot": {"online": True, "type": "INA3221", "status": "ok", "volt": 5000, "curr": 880, "power": 4400,
                "avg": 4350, "warn": 32760, "crit": 32760, "name": "VDD_IN"},
    },
    "gpu": {"gpu": {"type": "integrated",
                    "status": {"railgate": False, "tpc_pg_mask": False, "3d_scaling": True, "load": 34.5},
                    "freq": {"governor": "nvhost_podgov", "cur": 306000, "max": 918000, "min": 306000,
                             "GPC": [306000]}}},
    "nvpmodel": "15W",
}


def make_jtop_module(data: dict[str, Any]) -> types.ModuleType:
    """A stand-in for the jetson-stats package: `from jtop import jtop, JtopException`, a client with
    start()/close()/ok(spin)/with, and the documented properties temperature, power, gpu (read like a dict) and
    nvpmodel (.name, .id). Class attributes let a test make start() fail or the reader thread die."""
    module = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class NVPModel:
        def __init__(self, name: str, nvp_id: int) -> None:
            self._name, self._id = name, nvp_id

        @property
        def name(self) -> str:
            return self._name

        @property
        def id(self) -> int:
            return self._id

    class jtop:  # noqa: N801 - the package's name
        start_error: BaseException | None = None
        instances: list[jtop] = []

        def __init__(self, interval: float = 0.5) -> None:
            self.interval = interval
            self._running = False
            self._error: BaseException | None = None
            self.closed = False
            jtop.instances.append(self)

        def start(self) -> None:
            if jtop.start_error is not None:
                raise jtop.start_error
            self._running = True

        def ok(self, spin: bool = False) -> bool:
            if self._error is not None:
                raise self._error
            return self._running

        def close(self) -> None:
            self._running = False
            self.closed = True

        def __enter__(self) -> jtop:
            self.start()
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.close()

        @property
        def temperature(self) -> dict[str, Any]:
            return data["temperature"]

        @property
        def power(self) -> dict[str, Any]:
            return data["power"]

        @property
        def gpu(self) -> dict[str, Any]:
            return data["gpu"]

        @property
        def nvpmodel(self) -> NVPModel | None:
            return None if data["nvpmodel"] is None else NVPModel(data["nvpmodel"], 0)

    module.jtop = jtop
    module.JtopException = JtopException
    return module


@pytest.fixture
def jtop_stand_in(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = make_jtop_module(json.loads(json.dumps(ORIN_NX_JTOP)))
    monkeypatch.setitem(sys.modules, "jtop", module)
    return module


SERVICE_DOWN = "The jtop.service is not active. Please run:\nsudo jtop --install-service"    # jtop.py's own text


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


# ------------------------------------------------------------------------------------------------------- auto


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


# ------------------------------------------------------------------------- absurd readings (issue 16, item 28)


def test_sysfs_absurd_power_or_temperature_is_a_problem_and_the_sum_stays_bounded(tmp_path: Path) -> None:
    """A broken INA3221 or zone can read anything: digits past any float, or a power no machine draws. Each is a
    problem of that sample, never an exception or an infinite total; nor is a sum of plausible rails that
    together pass MAX_MW a total."""
    huge = 10 ** 400                                     # past the largest float, 1.8e308
    zone(tmp_path, 0, "tj-thermal", str(huge))
    zone(tmp_path, 1, "gpu-thermal", "45500")
    ina3221(tmp_path, "1-0040", "hwmon1", {1: ("VDD_CPU", huge, huge), 2: ("VDD_SOC", 5000, 10 ** 9),
                                           3: ("VDD_GPU", 5000, 200)})
    sample = SysfsReader(tmp_path).read()
    assert sample.temps_c == {"gpu": 45.5} and sample.power_mw == {"VDD_GPU": 1000.0} and sample.total_mw == 1000.0
    assert sample.problems == (
        "zone tj: temp: int too large to convert to float",
        "rail VDD_CPU: inf mW is not plausible (beyond ±10000000 mW: a broken sensor?)",
        "rail VDD_SOC: 5e+09 mW is not plausible (beyond ±10000000 mW: a broken sensor?)")
    ina3221(tmp_path, "1-0041", "hwmon2", {1: ("VDD_A", 6000, 1_000_000), 2: ("VDD_B", 6000, 1_000_000)})
    sample = SysfsReader(tmp_path).read()
    assert sample.power_mw["VDD_A"] == sample.power_mw["VDD_B"] == 6_000_000.0 and sample.total_mw is None
    assert sample.problems[-1] == ("total power: the rails' sum 1.2e+07 mW is not plausible (beyond ±10000000 mW:"
                                   " a broken sensor?)")


def test_jtop_and_nvml_absurd_power_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(json.dumps(ORIN_NX_JTOP))
    data["power"] = {"rail": {"VDD_A": {"online": True, "power": 1e308}, "VDD_B": {"online": True, "power": 1e308},
                              "VDD_C": {"online": True, "power": 2000}},
                     "tot": {"online": True, "power": 1e308}}                        # jtop's sum of the rails
    monkeypatch.setitem(sys.modules, "jtop", make_jtop_module(data))
    sample = JtopReader().read()
    assert sample.power_mw == {"VDD_C": 2000.0} and sample.total_mw == 2000.0
    assert [p.split(" is not")[0] for p in sample.problems[1:]] == [
        "rail VDD_A: 1e+308 mW", "rail VDD_B: 1e+308 mW", "total power: 1e+308 mW"]
    fake = make_pynvml()
    fake.nvmlDeviceGetPowerUsage = lambda handle: 0xFFFFFFFF if handle else 70000    # an unsigned -1
    fake.nvmlDeviceGetTemperature = lambda handle, sensor: 0xFFFFFFFF if handle else 40
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sample = NvmlReader().read()
    assert sample.temps_c == {"gpu0": 40.0} and sample.power_mw == {"gpu0": 70000.0} and sample.total_mw == 70000.0
    assert sample.problems == ("gpu1: temperature 4294967295 °C is not plausible",
                               "gpu1: power 4.295e+09 mW is not plausible (beyond ±10000000 mW: a broken sensor?)")


def test_trace_refuses_absurd_power(tmp_path: Path) -> None:
    """The issue's trace: two rails at 1e308 mW summed to inf, and `edge status --json` printed Infinity."""
    path = write_trace(tmp_path / "t.jsonl", [{"t": 0, "temps_c": {"tj": 50.0}, "power_mw": {"a": 1e308, "b": 1e308}}])
    with pytest.raises(TelemetryError, match="line 1 is malformed") as caught:
        TraceReader(path)
    assert "`power_mw.a` must be a number in 0..1e+07, got 1e+308" in caught.value.note
    path = write_trace(tmp_path / "t.jsonl", [{"t": 0, "power_mw": {"a": 6e6, "b": 6e6}}])
    sample = TraceReader(path).read()
    assert sample.total_mw is None and sample.problems[0].startswith("total power: the rails' sum 1.2e+07 mW")


# ------------------------------------------------------------------------------------------------------ trace


def write_trace(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


HEATING = [
    {"t": 0, "temps_c": {"tj": 60.0}, "power_mw": {"VDD_IN": 15000}, "mode": "MODE_30W"},
    {"t": 10, "temps_c": {"tj": 80.5}, "power_mw": {"VDD_IN": 22000, "VDD_SOC": 3000}, "mode": "MODE_30W",
     "gpu_load": 0.9},
    {"t": 20.5, "temps_c": {"tj": 95.0, "gpu": 93.0}, "power_mw": {"VDD_CPU_GPU_CV": 9000, "VDD_SOC": 3000},
     "mode": "MODE_30W", "total_mw": 25000, "trips_c": {"tj": {"passive": 99.0}}},
]


def test_trace_replays_in_real_time_on_the_clock(tmp_path: Path, clock: FakeClock) -> None:
    reader = TraceReader(write_trace(tmp_path / "heat.jsonl", HEATING), clock=clock)    # opened at 1000
    assert reader.read() == Sample(t=0.0, source="trace", temps_c={"tj": 60.0}, power_mw={"VDD_IN": 15000.0},
                                   total_mw=15000.0, mode="MODE_30W")
    clock.now = 1009.75
    assert (reader.read().t, reader.read().temps_c) == (9.75, {"tj": 60.0})
    clock.now = 1010.0
    second = reader.read()
    assert (second.t, second.temps_c, second.total_mw, second.gpu_load) == (10.0, {"tj": 80.5}, 22000.0, 0.9)
    assert not reader.ended
    clock.now = 1020.5
    assert reader.read().temps_c == {"tj": 95.0, "gpu": 93.0} and reader.ended
    clock.now = 2000.0                                                   # long after the last line: it holds
    last = reader.read()
    assert (last.t, last.temps_c, last.total_mw, last.trips_c, last.gpu_load) == (
        1000.0, {"tj": 95.0, "gpu": 93.0}, 25000.0, {"tj": {"passive": 99.0}}, None)
    assert last.power_mw == {"VDD_CPU_GPU_CV": 9000.0, "VDD_SOC": 3000.0} and last.problems == ()


def test_trace_is_empty_before_its_first_line(tmp_path: Path, clock: FakeClock) -> None:
    reader = TraceReader(write_trace(tmp_path / "late.jsonl", [{"t": 5, "temps_c": {"tj": 50}}]), clock=clock)
    clock.now += 4.5
    assert reader.read() == Sample(t=4.5, source="trace") and not reader.ended
    clock.now += 0.5
    assert reader.read().temps_c == {"tj": 50.0} and reader.ended


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON: "),
    ("[1, 2]", "a JSON object is expected, got list"),
    ('{"temps_c": {"tj": 50}}', "`t` (seconds since start) is missing"),
    ('{"t": "soon"}', "`t` must be a number in 0..inf, got 'soon'"),
    ('{"t": true}', "`t` must be a number in 0..inf, got True"),
    ('{"t": -1}', "`t` must be a number in 0..inf, got -1"),
    ('{"t": 3}', "`t` goes back from 5 to 3"),
    ('{"t": 6, "temps_c": {"tj": NaN}}', "not JSON: NaN is not a number"),
    ('{"t": 6, "temps_c": {"tj": 1e999}}', "`temps_c.tj` must be a number in -60..150, got inf"),
    ('{"t": 6, "temps_c": {"tj": 900}}', "`temps_c.tj` must be a number in -60..150, got 900"),
    ('{"t": 6, "temps_c": [50]}', "`temps_c` must be an object of name -> number, got [50]"),
    ('{"t": 6, "power_mw": {"VDD_IN": -5}}', "`power_mw.VDD_IN` must be a number in 0..1e+07, got -5"),
    ('{"t": 6, "gpu_load": 45}', "`gpu_load` must be a number in 0..1, got 45"),
    ('{"t": 6, "mode": 30}', "`mode` must be a string, got 30"),
    ('{"t": 6, "temp_c": {"tj": 50}}', "unknown key(s) temp_c; known: "),
    # a nesting bomb in a line's bounds: RecursionError up to Python 3.11, parsed (and refused) by 3.12's json
    ('{"t": 6, "temps_c": ' + "[" * 8000 + "]" * 8000 + "}", "" if sys.version_info >= (3, 12) else "not JSON: "),
    (b"\xff\xfe{}", "not JSON: 'utf-8' codec can't decode"),
])
def test_trace_malformed_line_is_an_error_with_its_line_number(tmp_path: Path, line: str | bytes, why: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"t": 0}\n\n{"t": 5, "temps_c": {"tj": 50}}\n' + (line if isinstance(line, bytes) else
                                                                          line.encode()) + b'\n{"t": 9}\n')
    with pytest.raises(TelemetryError) as caught:
        TraceReader(path)
    assert caught.value.what == f"trace {path}: line 4 is malformed"
    assert caught.value.note.startswith(f"line 4: {why}"), caught.value.note
    assert '"t": seconds since start' in caught.value.hint


def test_trace_refuses_an_oversized_file_or_line(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as file:
        file.truncate(TRACE_MAX_BYTES + 1)                      # sparse: no 16 MiB written
    with pytest.raises(TelemetryError) as caught:
        TraceReader(big)
    assert caught.value.what == f"trace {big} is over the 16 MiB limit"
    assert caught.value.note == f"{TRACE_MAX_BYTES + 1} bytes"
    line = {"t": 1, "mode": "x" * TRACE_MAX_LINE_BYTES}
    with pytest.raises(TelemetryError, match="line 2 is malformed") as caught:
        TraceReader(write_trace(tmp_path / "long.jsonl", [{"t": 0}, line]))
    assert caught.value.note == f"line 2: {len(json.dumps(line))} bytes, over the 16384-byte limit of a line"


def test_trace_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)                                                     # no writer: a plain open() would hang
    with pytest.raises(TelemetryError, match="is not a regular file"):
        TraceReader(fifo)
    with pytest.raises(TelemetryError, match="is not a regular file"):
        TraceReader(tmp_path)
    with pytest.raises(TelemetryError, match="cannot be opened") as caught:
        TraceReader(tmp_path / "missing.jsonl")
    assert caught.value.note == "ENOENT (No such file or directory)"
    with pytest.raises(TelemetryError, match="has no lines"):
        TraceReader(write_trace(tmp_path / "empty.jsonl", ["", "  "]))


# ------------------------------------------------------------------------------------------------------- nvml


class FakeNVMLError(Exception):
    pass


def make_pynvml(*, init_error: str | None = None, power_error_on: int | None = None) -> types.ModuleType:
    """Just enough of nvidia-ml-py for the reader's error paths on CPU; the real library is tested on the GPU tier."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError
    module.NVML_TEMPERATURE_GPU = 0
    module.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
    module.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    module.shutdowns = 0

    def init() -> None:
        if init_error:
            raise FakeNVMLError(init_error)

    def shutdown() -> None:
        module.shutdowns += 1

    def power(handle: int) -> int:
        if handle == power_error_on:
            raise FakeNVMLError("Not Supported")
        return 70000 + handle

    def threshold(handle: int, kind: int) -> int:
        if handle == 1:
            raise FakeNVMLError("Not Supported")
        return {0: 92, 1: 87}[kind]

    module.nvmlInit = init
    module.nvmlShutdown = shutdown
    module.nvmlDeviceGetCount = lambda: 2
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetTemperature = lambda handle, sensor: 40 + handle
    module.nvmlDeviceGetPowerUsage = power
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=25 * (handle + 1), memory=3)
    module.nvmlDeviceGetTemperatureThreshold = threshold
    return module


def test_nvml_reader_maps_each_gpu_and_reports_a_failed_query(monkeypatch: pytest.MonkeyPatch,
                                                              clock: FakeClock) -> None:
    fake = make_pynvml(power_error_on=1)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reader = NvmlReader(clock=clock)
    assert reader.read() == Sample(
        t=1000.0, source="nvml", temps_c={"gpu0": 40.0, "gpu1": 41.0},
        trips_c={"gpu0": {"passive": 87.0, "critical": 92.0}}, power_mw={"gpu0": 70000.0}, total_mw=70000.0,
        mode=None, gpu_load=0.5, problems=("gpu1: power: Not Supported",))
    reader.close()
    reader.close()
    assert fake.shutdowns == 1
    with pytest.raises(UsageError):
        reader.read()


def test_nvml_missing_or_without_a_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, no_pynvml: None) -> None:
    with pytest.raises(TelemetryError) as caught:
        NvmlReader()
    assert caught.value.what == "NVML telemetry requested but `import pynvml` failed"
    assert "edge[nvml]" in caught.value.hint and "Jetsons before Thor" in caught.value.hint
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(init_error="Driver Not Loaded"))
    with pytest.raises(TelemetryError) as caught:
        NvmlReader()
    assert (caught.value.what, caught.value.note) == ("NVML could not be initialised", "Driver Not Loaded")


@pytest.mark.gpu
def test_nvml_reads_this_gpu(tmp_path: Path, no_jtop: None, telemetry_log) -> None:
    pytest.importorskip("pynvml", reason="needs nvidia-ml-py (pip install 'edge[nvml]')")
    with open_reader("nvml") as reader:
        sample = reader.read()
    assert sample.source == "nvml" and sample.problems == (), sample.problems
    assert 5.0 < sample.temps_c["gpu0"] < 110.0
    assert sample.power_mw["gpu0"] > 1000.0 and sample.total_mw == sum(sample.power_mw.values())
    assert 0.0 <= sample.gpu_load <= 1.0
    trips = sample.trips_c["gpu0"]
    assert sample.temps_c["gpu0"] < trips["passive"] < trips["critical"], trips
    auto = open_reader("auto", root=tmp_path)                          # no jtop, no zone under tmp_path
    assert isinstance(auto, NvmlReader)
    auto.close()
    assert telemetry_log.records[-1].getMessage().startswith("telemetry auto: nvml; skipped jtop: ")


# ---------------------------------------------------------------------------------------------- open_reader


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
