"""What every telemetry reader shares: the `Sample` it returns, the `Reader` interface, `TelemetryError`, and the
checks that keep a broken sensor's reading out of a sample (the plausible temperature and power ranges)."""
from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
from collections.abc import Callable, Mapping

from edge.errors import EdgeError

Clock = Callable[[], float]

# The rail that measures the module's input, as jtop picks it (VDD_IN: Orin NX/Nano, Xavier NX; POM_5V_IN: Nano,
# TX), plus VIN (Thor's tegrastats names its input so; its sysfs label is unverified). A rail that only starts with
# VIN is not the input: AGX Orin's VIN_SYS_5V0 is one 5 V rail beside VDD_GPU_SOC and VDD_CPU_CV, summed as jtop does.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
# The one plausible temperature range, for the readers (a reading outside is a problem, not a temperature), the
# traces (a line outside is malformed) and the policy (a zone outside is offline): below a vehicle's cold start
# (-40 °C) and above any Jetson's or GPU's shutdown trip (Orin 104.5 °C), with margin. An offline sensor reads far
# outside (jtop -256 °C; a disabled trip point -274 °C, THERMAL_TEMP_INVALID).
PLAUSIBLE_C = (-60.0, 150.0)
MAX_MW = 10_000_000.0                    # 10 kW, more than any Jetson or a host of 8 discrete GPUs draws: a power
                                         # reading or sum beyond it (either sign) is a broken sensor


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
    """A telemetry reader could not be opened, or its URI is not one of edge.supervisor.telemetry.URIS."""


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


def error_text(exc: BaseException) -> str:
    """An OSError as `EAGAIN (Resource temporarily unavailable)`, anything else as its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})"
    return str(exc)


def finite_number(value: object) -> float | None:
    """`value` as a finite float, or None when it is not a number (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def plausible_c(value: object) -> bool:
    """Whether `value` is a temperature a working sensor can read (a finite number within PLAUSIBLE_C)."""
    number = finite_number(value)
    return number is not None and PLAUSIBLE_C[0] <= number <= PLAUSIBLE_C[1]


def plausible_mw(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= MAX_MW


def implausible_mw(what: str, value: float) -> str:
    """The problem of a power reading that plausible_mw refuses."""
    return f"{what} {value:.4g} mW is not plausible (beyond ±{MAX_MW:.0f} mW: a broken sensor?)"


def total_power_mw(power_mw: Mapping[str, float], problems: list[str]) -> float | None:
    """The input rail's power when there is one (INPUT_RAILS), else the sum of the rails, else None; a sum beyond
    MAX_MW is a problem, not a total (each rail is within it, so the sum is finite)."""
    for name in INPUT_RAILS:
        if name in power_mw:
            return power_mw[name]
    if not power_mw:
        return None
    total = math.fsum(power_mw.values())
    if plausible_mw(total):
        return total
    problems.append(implausible_mw("total power: the rails' sum", total))
    return None


def unique_name(name: str, taken: set[str], where: str) -> str:
    """`name`, or `name@where` when another zone or rail has it already."""
    return name if name not in taken else f"{name}@{where}"

