"""Thermal and power telemetry: readers that each return one `Sample` (DESIGN section 6).

The readers (jtop, sysfs, nvml, trace, none, auto) are added on top of this type; the supervisor's
policy (edge/supervisor.py) consumes nothing else.
"""
from __future__ import annotations

import dataclasses


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
