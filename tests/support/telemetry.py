"""Stand-ins for the telemetry readers' sources: a sysfs tree laid out by hand, the jetson-stats package, the
parts of nvidia-ml-py the reader calls, JSONL traces, a clock moved by hand and the telemetry logger's records."""
from __future__ import annotations

import json
import logging
import types
from pathlib import Path
from typing import Any


class FakeClock:
    """time.monotonic stand-in: tests move `now` by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


SERVICE_DOWN = "The jtop.service is not active. Please run:\nsudo jtop --install-service"    # jtop.py's own text


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
