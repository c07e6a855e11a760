"""Telemetry of discrete GPUs through NVML (nvidia-ml-py): temperature, board power, load and the slowdown and
shutdown thresholds of each GPU."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edge.errors import UsageError
from edge.log import get_logger
from edge.supervisor.telemetry.common import (
    Clock,
    Reader,
    Sample,
    TelemetryError,
    implausible_mw,
    plausible_c,
    plausible_mw,
    total_power_mw,
)

log = get_logger("telemetry")

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
        total = total_power_mw(power, problems)
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
        if celsius is not None and plausible_c(float(celsius)):
            temps[name] = float(celsius)
        elif celsius is not None:
            problems.append(f"{name}: temperature {celsius} °C is not plausible")
        if milliwatts is not None and plausible_mw(float(milliwatts)):
            power[name] = float(milliwatts)
        elif milliwatts is not None:
            problems.append(implausible_mw(f"{name}: power", float(milliwatts)))
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

