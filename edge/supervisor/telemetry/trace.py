"""Telemetry replayed from a JSONL trace (`trace:///PATH.jsonl`) in real time, for tests, demos and tuning on a PC;
the format is in docs/supervisor.md, "Telemetry traces"."""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge import files
from edge.supervisor.telemetry.common import (
    MAX_MW,
    PLAUSIBLE_C,
    Clock,
    Reader,
    Sample,
    TelemetryError,
    error_text,
    finite_number,
    total_power_mw,
)

TRACE_MAX_BYTES = 16 * 1024 * 1024       # about 80,000 lines: a day at 1 Hz
TRACE_MAX_LINE_BYTES = 16 * 1024
TRACE_KEYS = frozenset({"t", "temps_c", "power_mw", "mode", "gpu_load", "total_mw", "trips_c"})
TRACE_HINT = ('each line is one JSON object such as {"t": seconds since start, "temps_c": {zone: °C}, '
              '"power_mw": {rail: mW}}, t never going back; every key, its unit and range, the limits and an '
              'example file: docs/supervisor.md, "Telemetry traces"')


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
        raise TelemetryError(f"trace {path} cannot be opened or read", note=error_text(exc),
                             hint="check the path in trace:///ABSOLUTE/PATH.jsonl") from exc


def _too_big(path: Path, note: str) -> TelemetryError:
    return TelemetryError(f"trace {path} is over the {TRACE_MAX_BYTES // 2**20} MiB limit", note=note,
                          hint="split it, or thin it to one line a second")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _tracefinite_number(obj: Mapping[str, Any], key: str, *, low: float = -math.inf, high: float = math.inf,
                  within: str = "") -> float:
    value = finite_number(obj[key])
    if value is None or not low <= value <= high:
        raise ValueError(f"`{within}{key}` must be a number in {low:g}..{high:g}, got {obj[key]!r:.40}")
    return value


def _trace_numbers(obj: Mapping[str, Any], key: str, *, low: float = -math.inf,
                   high: float = math.inf) -> dict[str, float]:
    """`obj[key]`, an object of name -> number in low..high (empty when absent)."""
    raw = obj.get(key, {})
    if not isinstance(raw, dict):
        raise ValueError(f"`{key}` must be an object of name -> number, got {raw!r:.40}")
    return {name: _tracefinite_number(raw, name, low=low, high=high, within=f"{key}.") for name in raw}


def _trace_trips(obj: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    raw = obj.get("trips_c", {})
    if not isinstance(raw, dict):
        raise ValueError(f"`trips_c` must be an object of zone -> {{trip type: °C}}, got {raw!r:.40}")
    return {zone: _trace_numbers(raw, zone, low=PLAUSIBLE_C[0], high=PLAUSIBLE_C[1]) for zone in raw}


def _trace_optional(obj: Mapping[str, Any], key: str, *, low: float, high: float = math.inf) -> float | None:
    return None if obj.get(key) is None else _tracefinite_number(obj, key, low=low, high=high)


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
        total = total_power_mw(power, problems)
    return Sample(t=_tracefinite_number(obj, "t", low=0.0), source="trace",
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

