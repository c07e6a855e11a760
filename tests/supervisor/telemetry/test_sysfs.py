"""The sysfs reader (edge/supervisor/telemetry/sysfs.py) against trees laid out as on an Orin NX and other boards:
zones named as jtop names them, trips, rails and the input power, the GPU load, and what cannot be read."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edge.supervisor.telemetry.common import Sample, TelemetryError
from edge.supervisor.telemetry.sysfs import SysfsReader
from tests.support.telemetry import FakeClock, ina3221, write, zone

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
