"""Human-readable text for messages and status: one line per message for `edge subscribe`, the demo's
table, and `edge status`."""
from __future__ import annotations

import json
import math
from typing import Any


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def json_text(value: object, **options: Any) -> str:
    """`value` as strict JSON (RFC 8259 has no Infinity or NaN, which json.dumps writes by default and many parsers
    refuse): a float that is not finite becomes null, as a value that is not known."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def printable(text: str) -> str:
    """`text` safe for a terminal: each character that is not printable (control characters such as ESC, which
    starts a terminal's escape sequences, line breaks, bidirectional overrides) as its Python escape, e.g. \\x1b.
    For every string that came from telemetry, a peer or the daemon."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def summary(topic: str, p: dict[str, Any]) -> str:
    """One line for a message of any kind."""
    if p["kind"] == "det":
        names = p.get("labels") or [f"#{d[5]}" for d in p["detections"]]
        latency = (p["t_publish_ns"] - p["t_capture_ns"]) / 1e6
        dets = ", ".join(f"{n} {d[4]:.2f}" for n, d in zip(names, p["detections"]))
        return (f"{topic} seq={p['seq']} frame={p['frame']} {p['precision']} latency={latency:.1f}ms"
                f" {len(p['detections'])} det: {dets}")
    if p["kind"] == "heartbeat":
        lanes = "; ".join(f"{ln['task']}.{ln['camera']} {ln['precision']} {ln['fps']} fps"
                          f" p50={format_ms(ln['latency_ms_p50'])} p99={format_ms(ln['latency_ms_p99'])}"
                          f" drops={ln['dropped_camera']}/{ln['dropped_publisher']}" for ln in p["lanes"])
        return f"{topic} seq={p['seq']} uptime={p['uptime_s']}s {lanes}"
    extra = {k: v for k, v in p.items() if k not in ("v", "kind", "seq", "t_publish_ns", "t_wall_ns")}
    return f"{topic} seq={p['seq']} {extra}"


# ---------------------------------------------------------------- `edge status`

def status_table(status: dict[str, Any]) -> str:
    """The control socket's `status` reply as text: tasks, lanes, cameras, supervisor, telemetry, subscribers.
    Any value may be missing or None (shown as -): an older or newer daemon, or a part that is off."""
    parts = [f"edge {_cell(status.get('version'))}, up {_duration(status.get('uptime_s'))}",
             _section("tasks", _task_rows(_maps(status, "tasks"))),
             _section("lanes", _lane_rows(_maps(status, "lanes"))),
             _section("cameras", _camera_rows(_maps(status, "cameras"))),
             _supervisor(status.get("supervisor")),
             _telemetry(status.get("telemetry")),
             _peers(status.get("peers"))]
    return "\n\n".join(parts)


def _maps(status: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = status.get(key)
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _cell(value: object, spec: str = "") -> str:
    """A value as text: None as -, booleans as yes/no, numbers with `spec`."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    return printable(str(value))


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _grid(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded (reasons are long)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
            for row in (list(headers), *rows)]


def _section(title: str, lines: list[str]) -> str:
    return "\n".join([title, *("  " + line for line in lines)] if lines else [f"{title}: none"])


def _task_rows(tasks: list[dict[str, Any]]) -> list[str]:
    if not tasks:
        return []
    rows = [[_cell(t.get("task")), _cell(t.get("precision")), _cell(t.get("mode")), _cell(t.get("priority")),
             _rate(t.get("rate_scale")), _cell(t.get("loaded")), _cell(t.get("engine")), _cell(t.get("reason"))]
            for t in tasks]
    header, *lines = _grid(("TASK", "PRECISION", "MODE", "PRIORITY", "RATE", "LOADED", "ENGINE", "REASON"), rows)
    out = [header]
    for line, task in zip(lines, tasks):
        out.append(line)
        unavailable = task.get("unavailable")
        reason = _cell(task.get("reason"))
        if isinstance(unavailable, dict):           # each why once: not again when the reason already says it
            whys = [f"{_cell(name)}: {_cell(why)}" for name, why in unavailable.items() if _cell(why) not in reason]
            if whys:
                out.append("  cannot run " + "; ".join(whys))
    return out


def _rate(scale: object) -> str:
    value = _number(scale)
    return "-" if value is None else f"x{value:g}"


def _lane_rows(lanes: list[dict[str, Any]]) -> list[str]:
    if not lanes:
        return []
    rows = [[f"{_cell(ln.get('task'))}/{_cell(ln.get('camera'))}", _cell(ln.get("precision")),
             _cell(ln.get("fps"), ".1f"), format_ms(_number(ln.get("latency_ms_p50"))),
             format_ms(_number(ln.get("latency_ms_p99"))), _cell(ln.get("captured")), _cell(ln.get("processed")),
             _cell(ln.get("published")), f"{_cell(ln.get('dropped_camera'))}/{_cell(ln.get('dropped_publisher'))}"
             f"/{_cell(ln.get('skipped_rate'))}", _cell(ln.get("running")), _cell(ln.get("graphs"))] for ln in lanes]
    return _grid(("LANE", "PRECISION", "FPS", "P50", "P99", "CAPTURED", "PROCESSED", "PUBLISHED",
                  "DROPS cam/pub/rate", "RUNNING", "CUDA GRAPHS"), rows)


def _camera_rows(cameras: list[dict[str, Any]]) -> list[str]:
    if not cameras:
        return []
    rows = [[_cell(c.get("id")), _cell(c.get("connected")), _cell(c.get("captured")), _cell(c.get("outages")),
             _cell(c.get("reconnects")), _cell(c.get("missing_frames")), _cell(c.get("lost_frames"))] for c in cameras]
    return _grid(("CAMERA", "CONNECTED", "CAPTURED", "OUTAGES", "RECONNECTS", "MISSING FRAMES", "LOST FRAMES"), rows)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _supervisor(sup: object) -> str:
    if not isinstance(sup, dict):
        return "supervisor: off"
    lines = [f"supervisor: {_cell(sup.get('level'))}: {_cell(sup.get('reason'))}",
             f"  zone {_cell(sup.get('zone'))}: {_quantity(sup.get('temp_c'), '.1f', '°C')}, critical"
             f" {_quantity(sup.get('critical_c'), '.1f', '°C')}, power {_quantity(sup.get('total_mw'), '.0f', 'mW')}"]
    if sup.get("pending"):
        lines.append(f"  next: {_cell(sup.get('pending'))}")
    return "\n".join(lines)


def _telemetry(tel: object) -> str:
    if not isinstance(tel, dict):
        return "telemetry: none"
    load = _number(tel.get("gpu_load"))
    lines = [f"telemetry: {_cell(tel.get('source'))}, power mode {_cell(tel.get('mode'))}, GPU load"
             f" {'-' if load is None else f'{load:.0%}'}",
             f"  temperatures: {_readings(tel.get('temps_c'), '.1f', '°C')}",
             f"  power: {_readings(tel.get('power_mw'), '.0f', 'mW')};"
             f" total {_quantity(tel.get('total_mw'), '.0f', 'mW')}"]
    problems = tel.get("problems")
    if isinstance(problems, list) and problems:
        lines.append(f"  problems: {'; '.join(_cell(p) for p in problems)}")
    return "\n".join(lines)


def _readings(values: object, spec: str, unit: str) -> str:
    if not isinstance(values, dict) or not values:
        return "-"
    return ", ".join(f"{_cell(name)} {_quantity(value, spec, unit)}" for name, value in values.items())


def _quantity(value: object, spec: str, unit: str) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:{spec}} {unit}"


def _peers(peers: object) -> str:
    if not isinstance(peers, dict) or not peers:
        return "subscribers: -"
    return "subscribers: " + ", ".join(f"{_cell(key).replace('_', ' ')} {_cell(value)}" for key, value in peers.items())
