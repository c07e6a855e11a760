"""Thermal and power telemetry: readers that each return one `Sample` (DESIGN section 6).

A reader's constructor opens it, or raises a TelemetryError that says why; `read()` returns one Sample and
never raises for a value it cannot read: the value is left out and `Sample.problems` says why (a gated zone's
EAGAIN, a lost jtop connection); `close()` releases it. `open_reader(uri)` opens one by URI:

  auto                 the first that opens of jtop, sysfs (with a thermal zone) and nvml, else none; it logs which
  jtop                 the jetson-stats client (the jtop service's socket, /run/jtop.sock)
  sysfs, sysfs:///ROOT thermal zones, INA3221 rails and the iGPU load straight from sysfs (under ROOT for tests)
  nvml                 discrete GPUs through nvidia-ml-py
  trace:///PATH.jsonl  a JSONL replay in real time, for tests and simulation
  none                 empty samples

The supervisor's policy (edge/supervisor/policy.py) consumes nothing but `Sample`.
"""
from __future__ import annotations

import bisect
import dataclasses
import errno
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge import files
from edge.errors import EdgeError, UsageError
from edge.log import get_logger

log = get_logger("telemetry")

Clock = Callable[[], float]
URIS = ("auto", "none", "jtop", "sysfs", "sysfs:///ROOT", "nvml", "trace:///PATH.jsonl")

# The rail that measures the module's input, as jtop picks it (VDD_IN: Orin NX/Nano, Xavier NX; POM_5V_IN: Nano,
# TX), plus VIN (Thor's tegrastats names its input so; its sysfs label is unverified). A rail that only starts with
# VIN is not the input: AGX Orin's VIN_SYS_5V0 is one 5 V rail beside VDD_GPU_SOC and VDD_CPU_CV, summed as jtop does.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
PLAUSIBLE_C = (-100.0, 250.0)            # a reading outside is a broken or offline sensor (jtop's offline is -256)
MAX_MW = 10_000_000.0                    # 10 kW, more than any Jetson or a host of 8 discrete GPUs draws: a power
                                         # reading or sum beyond it (either sign) is a broken sensor
JTOP_OFFLINE_C = -256.0
SYSFS_READ_BYTES = 4096                  # a sysfs attribute is at most a page, returned by one read
TRACE_MAX_BYTES = 16 * 1024 * 1024       # about 80,000 lines: a day at 1 Hz
TRACE_MAX_LINE_BYTES = 16 * 1024
TRACE_KEYS = frozenset({"t", "temps_c", "power_mw", "mode", "gpu_load", "total_mw", "trips_c"})
TRACE_HINT = ('each line is one JSON object such as {"t": seconds since start, "temps_c": {zone: °C}, '
              '"power_mw": {rail: mW}}, t never going back; every key, its unit and range, the limits and an '
              'example file: docs/supervisor.md, "Telemetry traces"')


@dataclasses.dataclass(frozen=True)
class Sample:
    """One reading of the machine. Missing values are absent or None, never guessed."""

    t: float                                         # seconds, time.monotonic() when read (trace: its `t`)
    source: str                                      # the reader: jtop, sysfs, nvml, trace or none
    temps_c: dict[str, float] = dataclasses.field(default_factory=dict)      # zone -> °C, e.g. "tj", "gpu"
    trips_c: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # zone -> trip type -> °C
    power_mw: dict[str, float] = dataclasses.field(default_factory=dict)     # rail -> mW, e.g. "VDD_IN"
    total_mw: float | None = None                    # the module's input power (VDD_IN), else the rails' sum
    mode: str | None = None                          # nvpmodel power mode name, e.g. "MODE_30W"
    gpu_load: float | None = None                    # 0.0 to 1.0
    problems: tuple[str, ...] = ()                   # what could not be read, and why (reported, never fatal)


class TelemetryError(EdgeError):
    """A telemetry reader could not be opened, or its URI is not one of URIS."""


class Reader:
    """One source of samples: the constructor opens it, `read()` returns one Sample, `close()` releases it."""

    name = "reader"

    def read(self) -> Sample:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the constructor acquired; closing twice is harmless."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NoneReader(Reader):
    """No telemetry: empty samples."""

    name = "none"

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock

    def read(self) -> Sample:
        return Sample(t=self._clock(), source="none")


# ---------------------------------------------------------------------------------------------------- helpers


def on_jetson(root: Path = Path("/")) -> bool:
    """Whether `root` is a Jetson's (L4T writes /etc/nv_tegra_release)."""
    return (root / "etc" / "nv_tegra_release").exists()


def _why(exc: BaseException) -> str:
    """An OSError as `EAGAIN (Resource temporarily unavailable)`, anything else as its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})"
    return str(exc)


def _number(value: object) -> float | None:
    """`value` as a finite float, or None when it is not a number (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _plausible_c(value: float) -> bool:
    return PLAUSIBLE_C[0] <= value <= PLAUSIBLE_C[1]


def _plausible_mw(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= MAX_MW


def _implausible_mw(what: str, value: float) -> str:
    """The problem of a power reading that _plausible_mw refuses."""
    return f"{what} {value:.4g} mW is not plausible (beyond ±{MAX_MW:.0f} mW: a broken sensor?)"


def _total_mw(power_mw: Mapping[str, float], problems: list[str]) -> float | None:
    """The input rail's power when there is one (INPUT_RAILS), else the sum of the rails, else None; a sum beyond
    MAX_MW is a problem, not a total (each rail is within it, so the sum is finite)."""
    for name in INPUT_RAILS:
        if name in power_mw:
            return power_mw[name]
    if not power_mw:
        return None
    total = math.fsum(power_mw.values())
    if _plausible_mw(total):
        return total
    problems.append(_implausible_mw("total power: the rails' sum", total))
    return None


def _unique(name: str, taken: set[str], where: str) -> str:
    """`name`, or `name@where` when another zone or rail has it already."""
    return name if name not in taken else f"{name}@{where}"


# ------------------------------------------------------------------------------------------------------ sysfs


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
            log.warning("thermal zone %s skipped: its type cannot be read: %s", path.name, _why(exc))
            continue
        if kind:
            name = _unique(_zone_name(kind), {zone.name for zone in zones}, path.name)
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
            log.warning("INA3221 channel %s skipped: its label cannot be read: %s", label_path, _why(exc))
            continue
        volts, amps = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
        if _is_rail(channel, label) and volts.exists() and amps.exists():
            name = _unique(label, {rail.name for rail in rails}, hwmon.parent.parent.name)
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

    The power mode is None: sysfs has none. nvpmodel documents `nvpmodel -q` and /etc/nvpmodel.conf (the modes);
    /var/lib/nvpmodel/status ("pmode:0002", the last mode nvpmodel set) is only seen in community scripts and is
    unverified (jetson-notes 5.3), so it is not read. jtop reports the mode.
    """

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
        total = _total_mw(power, problems)
        return Sample(t=t, source="sysfs", temps_c=temps, trips_c=trips, power_mw=power, total_mw=total,
                      mode=None, gpu_load=self._read_gpu_load(problems), problems=tuple(problems))

    @staticmethod
    def _read_zone(zone: _Zone, temps: dict[str, float], trips: dict[str, dict[str, float]],
                   problems: list[str]) -> None:
        try:
            value = _read_int(zone.path / "temp") / 1000.0
        except (OSError, ValueError, OverflowError) as exc:        # OverflowError: digits past any float
            problems.append(f"zone {zone.name}: temp: {_why(exc)}")
        else:
            if _plausible_c(value):
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
                problems.append(f"zone {zone.name}: trip point {index}: {_why(exc)}")
                continue
            if kind and _plausible_c(value) and value < found.get(kind, math.inf):
                found[kind] = value
        return found

    @staticmethod
    def _read_rail(rail: _Rail, power: dict[str, float], problems: list[str]) -> None:
        values: list[int] = []
        for path in (rail.volts, rail.amps):
            try:
                values.append(_read_int(path))
            except (OSError, ValueError) as exc:
                problems.append(f"rail {rail.name}: {path.name}: {_why(exc)}")
                return
        try:
            milliwatts = values[0] * values[1] / 1000.0
        except OverflowError:                                # the product of two huge readings is past any float
            milliwatts = math.inf
        if _plausible_mw(milliwatts):
            power[rail.name] = milliwatts
        else:
            problems.append(_implausible_mw(f"rail {rail.name}:", milliwatts))

    def _read_gpu_load(self, problems: list[str]) -> float | None:
        if self._gpu_load is None:
            return None
        try:
            per_mille = _read_int(self._gpu_load)
        except (OSError, ValueError) as exc:
            problems.append(f"gpu load: {_why(exc)}")
            return None
        if not 0 <= per_mille <= 1000:
            problems.append(f"gpu load: {per_mille} is outside 0..1000")
            return None
        return per_mille / 1000.0


# ------------------------------------------------------------------------------------------------------- jtop


def _mapping(value: object) -> Mapping[str, Any]:
    """`value` when it reads like a dict (jtop's GPU object does), else an empty one."""
    return value if hasattr(value, "items") and hasattr(value, "get") else {}  # type: ignore[return-value]


def _jtop_temps(data: object, problems: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """jetson.temperature: {zone: {'online': bool, 'temp': °C (-256 when offline), 'max'?, 'crit'?}}. The
    optional hwmon limits become trips of the thermal framework's meaning: max -> hot, crit -> critical."""
    temps: dict[str, float] = {}
    trips: dict[str, dict[str, float]] = {}
    for zone, raw in _mapping(data).items():
        entry = _mapping(raw)
        value = _number(entry.get("temp"))
        if not entry.get("online", True) or value is None or value == JTOP_OFFLINE_C:
            problems.append(f"zone {zone}: offline")
            continue
        if not _plausible_c(value):
            problems.append(f"zone {zone}: temp {value:g} °C is not plausible")
            continue
        temps[zone] = value
        limits = {kind: _number(entry.get(key)) for key, kind in (("max", "hot"), ("crit", "critical"))}
        limits = {kind: v for kind, v in limits.items() if v is not None and _plausible_c(v)}
        if limits:
            trips[zone] = limits
    return temps, trips


def _jtop_power(data: object, problems: list[str]) -> tuple[dict[str, float], float | None]:
    """jetson.power: {'rail': {name: {'online', 'power' (mW), ...}}, 'tot': {'power' (mW), 'name'?}}. jtop moves
    the input rail (VDD_IN, POM_5V_IN) out of 'rail' into 'tot' with its 'name'; it goes back among the rails
    here, as sysfs has it. 'tot' without a name is jtop's sum of the rails."""
    power: dict[str, float] = {}
    for name, raw in _mapping(_mapping(data).get("rail")).items():
        entry = _mapping(raw)
        value = _number(entry.get("power"))
        if not entry.get("online", True) or value is None:
            problems.append(f"rail {name}: offline")
        elif not _plausible_mw(value):
            problems.append(_implausible_mw(f"rail {name}:", value))
        else:
            power[name] = value
    total_entry = _mapping(_mapping(data).get("tot"))
    total = _number(total_entry.get("power"))
    if total is not None and not _plausible_mw(total):
        problems.append(_implausible_mw("total power:", total))
        total = None
    if total is not None and isinstance(total_entry.get("name"), str):
        power[total_entry["name"]] = total
    return power, total if total is not None else _total_mw(power, problems)


def _jtop_gpu_load(data: object, problems: list[str]) -> float | None:
    """jetson.gpu: {name: {'type', 'status': {'load': percent, ...}, 'freq': {...}}}. The name is the GPU's
    device-tree node ('gpu' on Orin; jtop also knows ga10b, gv11b, ...): 'gpu' when there, else the first."""
    gpus = _mapping(data)
    if not gpus:
        return None
    entry = _mapping(gpus.get("gpu", next(iter(gpus.values()))))
    load = _number(_mapping(entry.get("status")).get("load"))
    if load is None or not 0 <= load <= 100:
        problems.append(f"gpu load: {entry.get('status')!r:.60} has no load in percent")
        return None
    return load / 100.0


class JtopReader(Reader):
    """The jetson-stats client (`jtop`), as jetson-notes 5.1 documents it: temperature, power, gpu, nvpmodel.

    It is a client of jtop.service (/run/jtop.sock, group jtop): when the package or the service is missing it
    fails at open, so `auto` falls back. A connection lost later makes samples with a problem, never an exception.
    """

    name = "jtop"

    def __init__(self, *, interval: float = 0.5, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        try:
            from jtop import jtop
        except ImportError as exc:
            raise TelemetryError("jtop telemetry requested but `from jtop import jtop` failed", note=str(exc),
                                 hint="on a Jetson install jetson-stats (pip install 'edge[jetson]') and its "
                                      "service (sudo jtop --install-service); elsewhere use sysfs, nvml or none",
                                 ) from exc
        client = jtop(interval=interval)
        try:
            client.start()
        except Exception as exc:  # noqa: BLE001 - whatever the client raises at start (JtopException, a socket
            # error, a timeout) means there is no jtop to read; the caller falls back
            raise TelemetryError("the jtop service cannot be reached",
                                 note=f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                                 hint="sudo systemctl restart jtop.service, and give the daemon's user the jtop group "
                                      "(SupplementaryGroups=jtop); --telemetry auto falls back to sysfs") from exc
        self._client: Any = client

    def read(self) -> Sample:
        if self._client is None:
            raise UsageError("JtopReader.read() after close()")
        t = self._clock()
        lost = self._lost()
        if lost:
            return Sample(t=t, source="jtop", problems=(lost,))
        problems: list[str] = []
        temps, trips = _jtop_temps(self._client.temperature, problems)
        power, total = _jtop_power(self._client.power, problems)
        gpu_load = _jtop_gpu_load(self._client.gpu, problems)
        mode = getattr(self._client.nvpmodel, "name", None)        # None where the board has no nvpmodel
        return Sample(t=t, source="jtop", temps_c=temps, trips_c=trips, power_mw=power, total_mw=total,
                      mode=None if mode is None else str(mode), gpu_load=gpu_load, problems=tuple(problems))

    def _lost(self) -> str | None:
        """Why the client stopped, or None. `ok(spin=True)` does not wait, and re-raises the error that stopped
        the client's reader thread (a lost service)."""
        try:
            running = self._client.ok(spin=True)
        except Exception as exc:  # noqa: BLE001 - any error of the client's thread: reported in the sample
            return f"jtop: connection lost: {type(exc).__name__}: {' '.join(str(exc).split())}"
        return None if running else "jtop: the client has stopped"

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


# ------------------------------------------------------------------------------------------------------- nvml

# NVML's thresholds as trips of the thermal framework's meaning: slowdown (the GPU throttles) -> passive,
# shutdown -> critical.
NVML_TRIPS = (("NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", "passive"), ("NVML_TEMPERATURE_THRESHOLD_SHUTDOWN", "critical"))


class NvmlReader(Reader):
    """Discrete GPUs through nvidia-ml-py (`pynvml`): GPU N is zone and rail `gpuN` (temperature, board power),
    its slowdown and shutdown thresholds its trips; `gpu_load` is the busiest GPU's, `total_mw` the GPUs' sum.
    Jetsons before Thor have no NVML."""

    name = "nvml"

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        try:
            import pynvml
        except ImportError as exc:
            raise TelemetryError("NVML telemetry requested but `import pynvml` failed", note=str(exc),
                                 hint="pip install 'edge[nvml]' (nvidia-ml-py); Jetsons before Thor have no NVML: "
                                      "use jtop or sysfs there") from exc
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise TelemetryError("NVML could not be initialised", note=str(exc),
                                 hint="is the NVIDIA driver loaded (nvidia-smi)?") from exc
        self._open = True
        self._gpus = self._find_gpus()
        self._trips = {name: self._thresholds(handle) for name, handle in self._gpus}

    def _find_gpus(self) -> list[tuple[str, Any]]:
        nvml = self._nvml
        try:
            gpus = [(f"gpu{i}", nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            self.close()
            raise TelemetryError("NVML could not list the GPUs", note=str(exc),
                                 hint="is the NVIDIA driver loaded (nvidia-smi)?") from exc
        if not gpus:
            self.close()
            raise TelemetryError("NVML sees no GPU", note="nvmlDeviceGetCount() is 0",
                                 hint="on a machine without an NVIDIA GPU use sysfs, a trace or none")
        return gpus

    def _thresholds(self, handle: Any) -> dict[str, float]:
        found: dict[str, float] = {}
        for constant, kind in NVML_TRIPS:
            try:
                found[kind] = float(self._nvml.nvmlDeviceGetTemperatureThreshold(handle, getattr(self._nvml, constant)))
            except self._nvml.NVMLError as exc:           # not every GPU reports every threshold
                log.debug("NVML threshold %s: %s", constant, exc)
        return found

    def read(self) -> Sample:
        if not self._open:
            raise UsageError("NvmlReader.read() after close()")
        t = self._clock()
        temps: dict[str, float] = {}
        power: dict[str, float] = {}
        loads: list[float] = []
        problems: list[str] = []
        for name, handle in self._gpus:
            self._read_gpu(name, handle, temps, power, loads, problems)
        total = _total_mw(power, problems)
        return Sample(t=t, source="nvml", temps_c=temps, trips_c={k: dict(v) for k, v in self._trips.items() if v},
                      power_mw=power, total_mw=total, mode=None, gpu_load=max(loads) if loads else None,
                      problems=tuple(problems))

    def _read_gpu(self, name: str, handle: Any, temps: dict[str, float], power: dict[str, float],
                  loads: list[float], problems: list[str]) -> None:
        nvml = self._nvml
        celsius = self._query(name, "temperature", problems, nvml.nvmlDeviceGetTemperature, handle,
                              nvml.NVML_TEMPERATURE_GPU)
        milliwatts = self._query(name, "power", problems, nvml.nvmlDeviceGetPowerUsage, handle)
        rates = self._query(name, "utilization", problems, nvml.nvmlDeviceGetUtilizationRates, handle)
        if celsius is not None and _plausible_c(float(celsius)):
            temps[name] = float(celsius)
        elif celsius is not None:
            problems.append(f"{name}: temperature {celsius} °C is not plausible")
        if milliwatts is not None and _plausible_mw(float(milliwatts)):
            power[name] = float(milliwatts)
        elif milliwatts is not None:
            problems.append(_implausible_mw(f"{name}: power", float(milliwatts)))
        if rates is not None:
            loads.append(float(rates.gpu) / 100.0)

    def _query(self, gpu: str, what: str, problems: list[str], call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            problems.append(f"{gpu}: {what}: {exc}")
            return None

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.debug("nvmlShutdown: %s", exc)


# ------------------------------------------------------------------------------------------------------ trace


def _read_bounded(path: Path) -> bytes:
    """The whole trace file, refused when it is not a regular file (a FIFO is not waited on) or is over
    TRACE_MAX_BYTES (edge/files.py)."""
    try:
        return files.read_regular(path, TRACE_MAX_BYTES)
    except files.NotRegularFile as exc:
        raise TelemetryError(f"trace {path} is not a regular file", note=str(exc).removeprefix("is not a regular file"
                             " but "), hint="a trace is a JSONL file") from None
    except files.FileTooLarge as exc:
        raise _too_big(path, str(exc)) from None
    except OSError as exc:
        raise TelemetryError(f"trace {path} cannot be opened or read", note=_why(exc),
                             hint="check the path in trace:///ABSOLUTE/PATH.jsonl") from exc


def _too_big(path: Path, note: str) -> TelemetryError:
    return TelemetryError(f"trace {path} is over the {TRACE_MAX_BYTES // 2**20} MiB limit", note=note,
                          hint="split it, or thin it to one line a second")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _trace_number(obj: Mapping[str, Any], key: str, *, low: float = -math.inf, high: float = math.inf,
                  within: str = "") -> float:
    value = _number(obj[key])
    if value is None or not low <= value <= high:
        raise ValueError(f"`{within}{key}` must be a number in {low:g}..{high:g}, got {obj[key]!r:.40}")
    return value


def _trace_numbers(obj: Mapping[str, Any], key: str, *, low: float = -math.inf,
                   high: float = math.inf) -> dict[str, float]:
    """`obj[key]`, an object of name -> number in low..high (empty when absent)."""
    raw = obj.get(key, {})
    if not isinstance(raw, dict):
        raise ValueError(f"`{key}` must be an object of name -> number, got {raw!r:.40}")
    return {name: _trace_number(raw, name, low=low, high=high, within=f"{key}.") for name in raw}


def _trace_trips(obj: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    raw = obj.get("trips_c", {})
    if not isinstance(raw, dict):
        raise ValueError(f"`trips_c` must be an object of zone -> {{trip type: °C}}, got {raw!r:.40}")
    return {zone: _trace_numbers(raw, zone, low=PLAUSIBLE_C[0], high=PLAUSIBLE_C[1]) for zone in raw}


def _trace_optional(obj: Mapping[str, Any], key: str, *, low: float, high: float = math.inf) -> float | None:
    return None if obj.get(key) is None else _trace_number(obj, key, low=low, high=high)


def _trace_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > TRACE_MAX_LINE_BYTES:
        raise ValueError(f"{len(raw)} bytes, over the {TRACE_MAX_LINE_BYTES}-byte limit of a line")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:        # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON object is expected, got {type(obj).__name__}")
    unknown = sorted(set(obj) - TRACE_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(TRACE_KEYS))}")
    if "t" not in obj:
        raise ValueError("`t` (seconds since start) is missing")
    return obj


def _trace_line(raw: bytes) -> Sample:
    obj = _trace_object(raw)
    mode = obj.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise ValueError(f"`mode` must be a string, got {mode!r:.40}")
    power = _trace_numbers(obj, "power_mw", low=0.0, high=MAX_MW)
    total = _trace_optional(obj, "total_mw", low=0.0, high=MAX_MW)
    problems: list[str] = []
    if total is None:
        total = _total_mw(power, problems)
    return Sample(t=_trace_number(obj, "t", low=0.0), source="trace",
                  temps_c=_trace_numbers(obj, "temps_c", low=PLAUSIBLE_C[0], high=PLAUSIBLE_C[1]),
                  trips_c=_trace_trips(obj), power_mw=power, total_mw=total, mode=mode,
                  gpu_load=_trace_optional(obj, "gpu_load", low=0.0, high=1.0), problems=tuple(problems))


def load_trace(path: Path) -> list[Sample]:
    """Every line of the JSONL trace at `path`, validated; TelemetryError names the first bad line."""
    samples: list[Sample] = []
    for number, raw in enumerate(_read_bounded(path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            sample = _trace_line(raw)
            if samples and sample.t < samples[-1].t:
                raise ValueError(f"`t` goes back from {samples[-1].t:g} to {sample.t:g}")
        except ValueError as exc:
            raise TelemetryError(f"trace {path}: line {number} is malformed", note=f"line {number}: {exc}",
                                 hint=TRACE_HINT) from None
        samples.append(sample)
    if not samples:
        raise TelemetryError(f"trace {path} has no lines", hint=TRACE_HINT)
    return samples


class TraceReader(Reader):
    """A JSONL trace replayed in real time: at `read()` the line in force is the last whose `t` has passed since
    the reader opened (on `clock`); after the last line it holds that one. The whole file is validated at open.

    A sample's `t` is the trace's time when read (seconds since the replay started): it keeps going while a line
    is held. Before the first line's `t` a sample is empty.
    """

    name = "trace"

    def __init__(self, path: Path | str, *, clock: Clock = time.monotonic) -> None:
        self.path = Path(path)
        self._samples = load_trace(self.path)
        self._times = [sample.t for sample in self._samples]
        self._clock = clock
        self._start = clock()

    @property
    def ended(self) -> bool:
        """True once the last line is in force."""
        return self._clock() - self._start >= self._times[-1]

    def read(self) -> Sample:
        elapsed = self._clock() - self._start
        index = bisect.bisect_right(self._times, elapsed) - 1
        if index < 0:
            return Sample(t=elapsed, source="trace")
        return dataclasses.replace(self._samples[index], t=elapsed)


# ------------------------------------------------------------------------------------------------------- URIs


def _bad_uri(uri: str, why: str) -> TelemetryError:
    return TelemetryError(f"telemetry URI {uri!r:.200} is not valid: {why}", note=f"got {uri!r:.200}",
                          hint=f"use one of: {', '.join(URIS)}")


def _uri_path(uri: str, rest: str) -> Path:
    """The path of sysfs://PATH or trace://PATH: everything after `://` (so sysfs:///ROOT is /ROOT)."""
    if not rest:
        raise _bad_uri(uri, "it names no path")
    if "?" in rest or "#" in rest:
        raise _bad_uri(uri, "telemetry URIs take no parameters")
    return Path(rest)


def _sysfs_with_zone(root: Path, clock: Clock) -> Reader:
    reader = SysfsReader(root, clock=clock)
    if not reader.zones:
        reader.close()
        raise TelemetryError(f"no thermal zone under {root}", note=f"rails: {', '.join(reader.rails)}")
    return reader


def _one_line(exc: EdgeError) -> str:
    return " ".join(exc.summary().split()) if exc.note else exc.what


def _auto(root: Path, clock: Clock) -> Reader:
    """jtop, then sysfs with at least one thermal zone, then nvml, else none; logs the choice and the skips."""
    candidates: tuple[tuple[str, Callable[[], Reader]], ...] = (
        ("jtop", lambda: JtopReader(clock=clock)),
        ("sysfs", lambda: _sysfs_with_zone(root, clock)),
        ("nvml", lambda: NvmlReader(clock=clock)))
    skipped: list[str] = []
    for name, make in candidates:
        try:
            reader = make()
        except TelemetryError as exc:
            skipped.append(f"{name}: {_one_line(exc)}")
            continue
        log.info("telemetry auto: %s%s", name, f"; skipped {'; '.join(skipped)}" if skipped else "")
        return reader
    if on_jetson(root):
        log.warning("telemetry auto: none, no temperatures or power; skipped %s", "; ".join(skipped))
    else:                  # a PC without sensors: nothing is wrong, and the supervisor holds NORMAL
        log.info("telemetry auto: none here (not a Jetson; no jtop, thermal zone or NVML): the supervisor holds NORMAL")
        log.debug("telemetry auto: skipped %s", "; ".join(skipped))
    return NoneReader(clock=clock)


def open_reader(uri: str, *, root: Path = Path("/"), clock: Clock = time.monotonic) -> Reader:
    """Open the reader `uri` names (one of URIS). `root` is the sysfs root of `sysfs` and `auto` (tests point it
    at a tree). TelemetryError when the URI is not valid or the reader cannot be opened (`auto` never fails)."""
    plain: dict[str, Callable[[], Reader]] = {
        "auto": lambda: _auto(Path(root), clock),
        "none": lambda: NoneReader(clock=clock),
        "jtop": lambda: JtopReader(clock=clock),
        "sysfs": lambda: SysfsReader(Path(root), clock=clock),
        "nvml": lambda: NvmlReader(clock=clock),
    }
    if uri in plain:
        return plain[uri]()
    scheme, separator, rest = uri.partition("://")
    if separator and scheme == "sysfs":
        return SysfsReader(_uri_path(uri, rest), clock=clock)
    if separator and scheme == "trace":
        return TraceReader(_uri_path(uri, rest), clock=clock)
    raise _bad_uri(uri, f"unknown source {scheme!r:.40}" if separator else "unknown source")
