"""Thermal and power telemetry: one reader module per source (jtop, sysfs, nvml, trace), each returning one
`Sample` (edge/supervisor/telemetry/common.py), and `open_reader(uri)`, which opens one by URI (URIS; what each
reads: docs/supervisor.md section 3).

A reader's constructor opens it, or raises a TelemetryError that says why; `read()` never raises for a value it
cannot read: the value is left out and `Sample.problems` says why; `close()` releases it. The supervisor's
policy consumes nothing but `Sample`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import EdgeError
from edge.log import get_logger
from edge.supervisor.telemetry.common import Clock, NoneReader, Reader, TelemetryError
from edge.supervisor.telemetry.jtop import JtopReader
from edge.supervisor.telemetry.nvml import NvmlReader
from edge.supervisor.telemetry.sysfs import SysfsReader
from edge.supervisor.telemetry.trace import TraceReader

log = get_logger("telemetry")
URIS = ("auto", "none", "jtop", "sysfs", "sysfs:///ROOT", "nvml", "trace:///PATH.jsonl")


def on_jetson(root: Path = Path("/")) -> bool:
    """Whether `root` is a Jetson's (L4T writes /etc/nv_tegra_release)."""
    return (root / "etc" / "nv_tegra_release").exists()


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
