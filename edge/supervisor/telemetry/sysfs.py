"""Telemetry straight from sysfs: thermal zones with their trip points, INA3221 power rails and the iGPU load
(`sysfs`, `sysfs:///ROOT`), found by globbing, never by names written in the code."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from pathlib import Path

from edge.log import get_logger
from edge.supervisor.telemetry.common import (
    Clock,
    Reader,
    Sample,
    TelemetryError,
    error_text,
    implausible_mw,
    plausible_c,
    plausible_mw,
    total_power_mw,
    unique_name,
)

log = get_logger("telemetry")
SYSFS_READ_BYTES = 4096                  # a sysfs attribute is at most a page, returned by one read


@dataclasses.dataclass(frozen=True)
class _Zone:
    name: str                                        # as jtop names it: "cpu" for type cpu-thermal
    path: Path                                       # .../thermal_zoneN
    trips: tuple[int, ...]                           # the N of its trip_point_N_temp files


@dataclasses.dataclass(frozen=True)
class _Rail:
    name: str                                        # its inN_label, e.g. "VDD_IN"
    volts: Path                                      # inN_input, mV
    amps: Path                                       # currN_input, mA


_ZONE_DIR = re.compile(r"thermal_zone(\d+)")
_TRIP_TEMP = re.compile(r"trip_point_(\d+)_temp")
_RAIL_LABEL = re.compile(r"in(\d+)_label")
_NOT_CONNECTED = re.compile(r"(?<![A-Za-z])NC(?![A-Za-z])")   # "NC", "NC_1"; not the NC inside "VDD_SYNC"
SUM_CHANNEL = 7                                  # the ina3221 driver's "sum of shunt voltages" (in7, no curr7)
GPU_NODE_NAMES = ("gv11b", "gp10b", "ga10b", "gb10b")      # jtop's iGPU device-tree names, besides any "*gpu*"


def _read_text(path: Path) -> str:
    """One sysfs attribute. O_NONBLOCK: a power-gated zone answers EAGAIN instead of blocking, and a FIFO planted
    in the tree cannot hang the reader. os.read, not pathlib: no wrapper turns EAGAIN into something odd."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        data = os.read(fd, SYSFS_READ_BYTES)
    finally:
        os.close(fd)
    return data.decode("utf-8").strip(" \t\r\n\x00")    # device-tree strings end with a NUL


def _read_int(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a number: {text[:32]!r}") from None


def _zone_name(kind: str) -> str:
    """A zone's name as jtop gives it: its type up to the first '-', else the first '_' (cpu-thermal -> cpu,
    Xavier's Tboard_tegra -> Tboard)."""
    separator = "-" if "-" in kind else "_"
    return kind.split(separator, 1)[0] or kind


def _find_zones(thermal: Path) -> list[_Zone]:
    """Every thermal_zoneN under `thermal` whose type can be read, in zone order."""
    found: list[tuple[int, Path]] = []
    for path in thermal.glob("thermal_zone*"):
        match = _ZONE_DIR.fullmatch(path.name)
        if match:
            found.append((int(match[1]), path))
    zones: list[_Zone] = []
    for _, path in sorted(found):
        try:
            kind = _read_text(path / "type")
        except (OSError, ValueError) as exc:
            log.warning("thermal zone %s skipped: its type cannot be read: %s", path.name, error_text(exc))
            continue
        if kind:
            name = unique_name(_zone_name(kind), {zone.name for zone in zones}, path.name)
            zones.append(_Zone(name, path, _trip_indices(path)))
    return zones


def _trip_indices(zone: Path) -> tuple[int, ...]:
    indices = (_TRIP_TEMP.fullmatch(path.name) for path in zone.glob("trip_point_*_temp"))
    return tuple(sorted(int(match[1]) for match in indices if match))


def _is_rail(channel: int, label: str) -> bool:
    """jtop's rule: neither a not-connected channel (NC) nor the sum of the shunt voltages (channel 7)."""
    return (bool(label) and channel != SUM_CHANNEL and "sum of shunt" not in label.lower()
            and not _NOT_CONNECTED.search(label))


def _find_rails(driver: Path) -> list[_Rail]:
    """The INA3221 channels under `driver`/*/hwmon/hwmon*/ that are power rails. The hwmon index changes between
    boots and kernels, hence the glob; a label on two chips gets `@<bus-address>` on its second."""
    rails: list[_Rail] = []
    for label_path in sorted(driver.glob("*/hwmon/hwmon*/in*_label")):
        match = _RAIL_LABEL.fullmatch(label_path.name)
        if not match:
            continue
        channel, hwmon = int(match[1]), label_path.parent
        try:
            label = _read_text(label_path)
        except (OSError, ValueError) as exc:
            log.warning("INA3221 channel %s skipped: its label cannot be read: %s", label_path, error_text(exc))
            continue
        volts, amps = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
        if _is_rail(channel, label) and volts.exists() and amps.exists():
            name = unique_name(label, {rail.name for rail in rails}, hwmon.parent.parent.name)
            rails.append(_Rail(name, volts, amps))
    return rails


def _find_gpu_load(sys_dir: Path) -> Path | None:
    """The iGPU's `load` file (per mille): under the devfreq node whose device is a GPU, as jtop finds it, else
    /sys/devices/platform/gpu.0/load (Orin) or /sys/devices/gpu.0/load (Nano, TX2). None when there is none
    (Thor's GPU reports its load through NVML, not sysfs)."""
    for node in sorted((sys_dir / "class" / "devfreq").glob("*")):
        try:
            name = _read_text(node / "device" / "of_node" / "name").lower()
        except (OSError, ValueError):
            continue
        if (name in GPU_NODE_NAMES or "gpu" in name) and (node / "device" / "load").exists():
            return node / "device" / "load"
    for path in (sys_dir / "devices" / "platform" / "gpu.0" / "load", sys_dir / "devices" / "gpu.0" / "load"):
        if path.exists():
            return path
    return None


class SysfsReader(Reader):
    """Thermal zones (sys/class/thermal/thermal_zone*), INA3221 rails and the iGPU load, read from sysfs under
    `root`. Zones and rails are found at open (globbed, never named in the code) and read at every `read()`;
    a zone or rail that cannot be read (EAGAIN on a gated cv* zone, garbage) is a problem of that sample only.
    The power mode is None: sysfs has none (docs/supervisor.md says why no nvpmodel file is read)."""

    name = "sysfs"

    def __init__(self, root: Path = Path("/"), *, clock: Clock = time.monotonic) -> None:
        self.root = Path(root)
        self._clock = clock
        self._zones = _find_zones(self.root / "sys" / "class" / "thermal")
        self._rails = _find_rails(self.root / "sys" / "bus" / "i2c" / "drivers" / "ina3221")
        self._gpu_load = _find_gpu_load(self.root / "sys")
        if not self._zones and not self._rails:
            raise TelemetryError(f"no thermal zone and no INA3221 rail under {self.root}",
                                 note=f"looked for {self.root / 'sys/class/thermal/thermal_zone*'} and "
                                      f"{self.root / 'sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label'}",
                                 hint="on a Jetson use sysfs (root /); elsewhere use nvml, none or a trace")
        log.debug("sysfs under %s: zones %s, rails %s, GPU load %s", self.root, ", ".join(self.zones) or "-",
                  ", ".join(self.rails) or "-", self._gpu_load or "-")

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(zone.name for zone in self._zones)

    @property
    def rails(self) -> tuple[str, ...]:
        return tuple(rail.name for rail in self._rails)

    def read(self) -> Sample:
        t = self._clock()
        problems: list[str] = []
        temps: dict[str, float] = {}
        trips: dict[str, dict[str, float]] = {}
        for zone in self._zones:
            self._read_zone(zone, temps, trips, problems)
        power: dict[str, float] = {}
        for rail in self._rails:
            self._read_rail(rail, power, problems)
        total = total_power_mw(power, problems)
        return Sample(t=t, source="sysfs", temps_c=temps, trips_c=trips, power_mw=power, total_mw=total,
                      mode=None, gpu_load=self._read_gpu_load(problems), problems=tuple(problems))

    @staticmethod
    def _read_zone(zone: _Zone, temps: dict[str, float], trips: dict[str, dict[str, float]],
                   problems: list[str]) -> None:
        try:
            value = _read_int(zone.path / "temp") / 1000.0
        except (OSError, ValueError, OverflowError) as exc:        # OverflowError: digits past any float
            problems.append(f"zone {zone.name}: temp: {error_text(exc)}")
        else:
            if plausible_c(value):
                temps[zone.name] = value
            else:
                problems.append(f"zone {zone.name}: temp {value:g} °C is not plausible (sensor offline?)")
        found = SysfsReader._read_trips(zone, problems)
        if found:
            trips[zone.name] = found

    @staticmethod
    def _read_trips(zone: _Zone, problems: list[str]) -> dict[str, float]:
        """Trip type -> °C; of several trips of one type the lowest, the first to act. A disabled trip (below
        absolute zero, THERMAL_TEMP_INVALID) is left out."""
        found: dict[str, float] = {}
        for index in zone.trips:
            try:
                kind = _read_text(zone.path / f"trip_point_{index}_type")
                value = _read_int(zone.path / f"trip_point_{index}_temp") / 1000.0
            except (OSError, ValueError, OverflowError) as exc:
                problems.append(f"zone {zone.name}: trip point {index}: {error_text(exc)}")
                continue
            if kind and plausible_c(value) and value < found.get(kind, math.inf):
                found[kind] = value
        return found

    @staticmethod
    def _read_rail(rail: _Rail, power: dict[str, float], problems: list[str]) -> None:
        values: list[int] = []
        for path in (rail.volts, rail.amps):
            try:
                values.append(_read_int(path))
            except (OSError, ValueError) as exc:
                problems.append(f"rail {rail.name}: {path.name}: {error_text(exc)}")
                return
        try:
            milliwatts = values[0] * values[1] / 1000.0
        except OverflowError:                                # the product of two huge readings is past any float
            milliwatts = math.inf
        if plausible_mw(milliwatts):
            power[rail.name] = milliwatts
        else:
            problems.append(implausible_mw(f"rail {rail.name}:", milliwatts))

    def _read_gpu_load(self, problems: list[str]) -> float | None:
        if self._gpu_load is None:
            return None
        try:
            per_mille = _read_int(self._gpu_load)
        except (OSError, ValueError) as exc:
            problems.append(f"gpu load: {error_text(exc)}")
            return None
        if not 0 <= per_mille <= 1000:
            problems.append(f"gpu load: {per_mille} is outside 0..1000")
            return None
        return per_mille / 1000.0

