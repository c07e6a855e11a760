"""Human-readable text for messages and status: one line per message for `edge subscribe`, the demo's
table, and `edge status`."""
from __future__ import annotations

from typing import Any


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


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
