"""What the config shares with the wire (edge/wire): the endpoints (their form, whether one stays on this machine,
the defaults in the runtime directory) and the bounds of a results message that config values must stay within
(a task name or camera id, the detections of one frame)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from edge.config.cameras import redact

RUN_DIR = Path("/run/edge")
MAX_DETECTIONS = 10_000              # detections in one det message (the config's max_detections at most)
NAME_BYTES = 64                      # a task name or camera id: letters, digits, _ and - (part of topics)
NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
NAME_PATTERN = rf"^[A-Za-z0-9_-]{{1,{NAME_BYTES}}}$"     # NAME_CHARS, as the config checks a name


def runtime_dir() -> Path:
    """/run/edge under systemd (RuntimeDirectory=edge); else $XDG_RUNTIME_DIR/edge or /tmp/edge-UID."""
    if RUN_DIR.is_dir() and os.access(RUN_DIR, os.W_OK):
        return RUN_DIR
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "edge" if base else Path(f"/tmp/edge-{os.getuid()}")


def default_results_endpoint() -> str:
    return f"ipc://{runtime_dir() / 'results.sock'}"


def default_control_endpoint() -> str:
    return f"ipc://{runtime_dir() / 'control.sock'}"


def check_endpoint(endpoint: str) -> str:
    """Validate an endpoint's form (ipc://PATH or tcp://HOST:PORT); ValueError with the rule, the endpoint
    redacted. Whether tcp is allowed at all is the config's rule (results on tcp only with CURVE, control never)."""
    if endpoint.startswith("ipc://"):
        if not endpoint[len("ipc://"):].startswith("/"):
            raise ValueError(f"ipc endpoint {redact(endpoint)!r} needs an absolute path, e.g. ipc:///run/edge/results.sock")
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"endpoint {redact(endpoint)!r} must start with ipc:// or tcp://")
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"tcp endpoint {redact(endpoint)!r} must be tcp://HOST:PORT")
    return endpoint


def is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
