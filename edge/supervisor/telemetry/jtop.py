"""Telemetry from the jetson-stats client (`jtop`): temperatures, power rails, the GPU load and the nvpmodel mode
through the jtop service's socket."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from edge.errors import UsageError
from edge.supervisor.telemetry.common import (
    Clock,
    Reader,
    Sample,
    TelemetryError,
    finite_number,
    implausible_mw,
    plausible_c,
    plausible_mw,
    total_power_mw,
)

JTOP_OFFLINE_C = -256.0


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
        value = finite_number(entry.get("temp"))
        if not entry.get("online", True) or value is None or value == JTOP_OFFLINE_C:
            problems.append(f"zone {zone}: offline")
            continue
        if not plausible_c(value):
            problems.append(f"zone {zone}: temp {value:g} °C is not plausible")
            continue
        temps[zone] = value
        limits = {kind: finite_number(entry.get(key)) for key, kind in (("max", "hot"), ("crit", "critical"))}
        limits = {kind: v for kind, v in limits.items() if v is not None and plausible_c(v)}
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
        value = finite_number(entry.get("power"))
        if not entry.get("online", True) or value is None:
            problems.append(f"rail {name}: offline")
        elif not plausible_mw(value):
            problems.append(implausible_mw(f"rail {name}:", value))
        else:
            power[name] = value
    total_entry = _mapping(_mapping(data).get("tot"))
    total = finite_number(total_entry.get("power"))
    if total is not None and not plausible_mw(total):
        problems.append(implausible_mw("total power:", total))
        total = None
    if total is not None and isinstance(total_entry.get("name"), str):
        power[total_entry["name"]] = total
    return power, total if total is not None else total_power_mw(power, problems)


def _jtop_gpu_load(data: object, problems: list[str]) -> float | None:
    """jetson.gpu: {name: {'type', 'status': {'load': percent, ...}, 'freq': {...}}}. The name is the GPU's
    device-tree node ('gpu' on Orin; jtop also knows ga10b, gv11b, ...): 'gpu' when there, else the first."""
    gpus = _mapping(data)
    if not gpus:
        return None
    entry = _mapping(gpus.get("gpu", next(iter(gpus.values()))))
    load = finite_number(_mapping(entry.get("status")).get("load"))
    if load is None or not 0 <= load <= 100:
        problems.append(f"gpu load: {entry.get('status')!r:.60} has no load in percent")
        return None
    return load / 100.0


class JtopReader(Reader):
    """The jetson-stats client (`jtop`): its temperature, power, gpu and nvpmodel attributes.

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

