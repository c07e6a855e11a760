"""Wire protocol schema v1: topics, payload fields, safe unpacking (docs/protocol.md). The endpoints' form and
defaults, and the bounds the config shares with the wire, are in edge/config/wire.py."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from edge.config.wire import MAX_DETECTIONS, NAME_BYTES, NAME_CHARS
from edge.errors import ProtocolError

SCHEMA_VERSION = 1
KINDS = ("det", "heartbeat", "event", "telemetry")
EVENTS = ("camera.lost", "camera.recovered", "precision.switch", "supervisor.level", "task.enabled",
          "task.disabled", "engine.refused", "telemetry.problem", "config.reload")
MAX_MESSAGE_BYTES = 1 << 20          # largest results payload a subscriber accepts
MAX_TOPIC_BYTES = len("det.") + NAME_BYTES + 1 + NAME_BYTES
_TOPIC_ROOTS = {b"det.": 2, b"sys.": 1}   # det.<task>.<camera>; sys.heartbeat, sys.event


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc:// endpoint; None for any other transport."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def det_topic(task: str, camera: str) -> str:
    return f"det.{task}.{camera}"


def is_topic_prefix(prefix: bytes) -> bool:
    """True when some topic edge can publish starts with `prefix` (the subscriptions the daemon accepts):
    a prefix of `det.<task>.<camera>` or `sys.<name>`, names of letters, digits, `_` and `-`."""
    if len(prefix) > MAX_TOPIC_BYTES:
        return False
    for root, names in _TOPIC_ROOTS.items():
        if root.startswith(prefix):
            return True
        if prefix.startswith(root):
            parts = prefix[len(root):].split(b".")
            return (len(parts) <= names and all(parts[:-1])
                    and all(len(part) <= NAME_BYTES and NAME_CHARS.issuperset(part) for part in parts))
    return False


# ---------------------------------------------------------------- the messages (the only place they are built)
# The publisher adds `seq`, `t_publish_ns` and `t_wall_ns` when it sends.

def det_message(*, task: str, camera: str, frame: int, t_capture_ns: int, precision: str, engine: str,
                size: tuple[int, int], detections: Iterable[Sequence[float]],
                labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The detections of one frame; `labels` (the model's class names) adds a name per detection."""
    rows = [[round(float(x1), 1), round(float(y1), 1), round(float(x2), 1), round(float(y2), 1),
             round(float(score), 4), int(cls)] for x1, y1, x2, y2, score, cls in detections]
    payload: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": "det", "task": task, "camera": camera, "frame": frame,
                               "t_capture_ns": t_capture_ns, "precision": precision, "engine": engine,
                               "size": [int(size[0]), int(size[1])], "detections": rows}
    if labels is not None:
        payload["labels"] = [labels[row[5]] if 0 <= row[5] < len(labels) else str(row[5]) for row in rows]
    return payload


def heartbeat_message(*, version: str, uptime_s: float, lanes: list[dict[str, Any]], cameras: list[dict[str, Any]],
                      peers: dict[str, int], supervisor: dict[str, Any] | None) -> dict[str, Any]:
    """The daemon's state: per-lane counters (`lane_row`), cameras, subscriber connections
    (connections, subscriptions, refused_connections, rejected_inbound, dropped_other) and the
    supervisor's level with its reason (None where no supervisor runs)."""
    return {"v": SCHEMA_VERSION, "kind": "heartbeat", "version": version, "uptime_s": round(uptime_s, 3),
            "lanes": lanes, "cameras": cameras, **peers, "supervisor": supervisor}


def event_message(event: str, **details: str | int | float | None) -> dict[str, Any]:
    """Something that happened once (EVENTS), with its details, e.g. `camera`, `reason`."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    return {"v": SCHEMA_VERSION, "kind": "event", "event": event, **details}


def telemetry_message(*, source: str, temps_c: dict[str, float], power_mw: dict[str, float],
                      total_mw: float | None, mode: str | None, gpu_load: float | None,
                      problems: Sequence[str]) -> dict[str, Any]:
    """One telemetry sample, as the supervisor saw it."""
    return {"v": SCHEMA_VERSION, "kind": "telemetry", "source": source,
            "temps_c": {k: round(v, 2) for k, v in temps_c.items()},
            "power_mw": {k: round(v, 1) for k, v in power_mw.items()},
            "total_mw": None if total_mw is None else round(total_mw, 1), "mode": mode,
            "gpu_load": None if gpu_load is None else round(gpu_load, 3), "problems": list(problems)}


def pack(payload: dict[str, Any]) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _no_timestamp(values: Iterable[Any]) -> None:
    """msgpack-python makes a Timestamp of ext type -1 before ext_hook could refuse it (timestamp=0)."""
    if msgpack.Timestamp in map(type, values):
        raise ValueError("msgpack ext type -1 (a timestamp) is not allowed")


def _array(items: list[Any]) -> list[Any]:
    _no_timestamp(items)
    return items


def _map(pairs: list[tuple[Any, Any]]) -> dict[str | bytes, Any]:
    """A map with each key once: msgpack-python keeps the last of repeated keys, other decoders may keep the first."""
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str | bytes] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"a map with the key {key!r} more than once")
            seen.add(key)
    _no_timestamp(result.values())
    return result


def unpack(buf: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Unpack untrusted msgpack: size-bounded, str keys only, each key once, no ext types (timestamps neither)."""
    if len(buf) > max_bytes:
        raise ProtocolError(f"message of {len(buf)} bytes exceeds the {max_bytes}-byte limit")
    try:
        message = msgpack.unpackb(buf, raw=False, strict_map_key=True, ext_hook=_reject_ext, timestamp=0,
                                  list_hook=_array, object_pairs_hook=_map, max_str_len=max_bytes,
                                  max_bin_len=max_bytes, max_array_len=MAX_DETECTIONS * 6, max_map_len=1024)
        _no_timestamp((message,))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"message is not valid msgpack: {exc}") from exc
    return message


_COMMON = {"v": int, "kind": str, "seq": int, "t_publish_ns": int, "t_wall_ns": int}
_DET = {"task": str, "camera": str, "frame": int, "t_capture_ns": int, "precision": str, "engine": str,
        "size": list, "detections": list}


def validate(topic: str, payload: Any) -> dict[str, Any]:
    """Check a decoded payload against schema v1; ProtocolError names the first problem."""
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload on {topic!r} is {type(payload).__name__}, not a map")
    if payload.get("v") != SCHEMA_VERSION:
        raise ProtocolError(f"payload on {topic!r} has schema version {payload.get('v')!r}, expected {SCHEMA_VERSION}")
    fields = dict(_COMMON, **_DET) if payload.get("kind") == "det" else _COMMON
    for key, kind in fields.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise ProtocolError(f"payload on {topic!r}: field {key!r} is {payload.get(key)!r},"
                                f" expected {kind.__name__}")
    if payload["kind"] not in KINDS:
        raise ProtocolError(f"payload on {topic!r} has unknown kind {payload['kind']!r}")
    if payload["kind"] == "det":
        _validate_detections(topic, payload)
    return payload


def _validate_detections(topic: str, payload: dict[str, Any]) -> None:
    size = payload["size"]
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ProtocolError(f"payload on {topic!r}: size {size!r} is not [width, height]")
    for det in payload["detections"]:
        if not (isinstance(det, list) and len(det) == 6 and all(isinstance(v, (int, float)) for v in det)):
            raise ProtocolError(f"payload on {topic!r}: detection {det!r} is not [x1, y1, x2, y2, score, class_id]")
