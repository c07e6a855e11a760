"""What the config shares with the wire (edge/wire): the endpoints (their form, whether one stays on this machine,
the defaults in the runtime directory) and the bounds of a results message that config values must stay within
(a task name or camera id, the detections of one frame)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from edge.config.cameras import check_characters, redact

RUN_DIR = Path("/run/edge")
MAX_DETECTIONS = 10_000              # detections in one det message (the config's max_detections at most)
NAME_BYTES = 64                      # a task name or camera id: letters, digits, _ and - (part of topics)
NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
NAME_PATTERN = rf"^[A-Za-z0-9_-]{{1,{NAME_BYTES}}}$"     # NAME_CHARS, as the config checks a name
# A unix socket's path, in bytes: Linux's sockaddr_un.sun_path is 108 bytes with the terminating NUL (unix(7)),
# so 107; a longer ipc:// path fails the bind (ZMQError) or the probe (OSError). A path that fits cannot hold a
# part over NAME_MAX (255 bytes, ENAMETOOLONG) either.
IPC_PATH_BYTES = 107


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
    """Validate an endpoint's form (ipc://PATH or tcp://HOST:PORT) and that the system can take it as written;
    ValueError with the rule, the endpoint redacted. Whether tcp is allowed at all is the config's rule (results
    on tcp only with CURVE, control never)."""
    check_characters(endpoint, "endpoint")
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path.startswith("/"):
            raise ValueError(f"ipc endpoint {redact(endpoint)!r} needs an absolute path, e.g. ipc:///run/edge/results.sock")
        size = len(path.encode("utf-8"))
        if size > IPC_PATH_BYTES:
            raise ValueError(f"the path of an ipc endpoint has {size} bytes (UTF-8); a unix socket path holds at most"
                             f" {IPC_PATH_BYTES} on Linux: choose a shorter one, e.g. ipc:///run/edge/results.sock")
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
    if "@" in parts.netloc:              # ZeroMQ takes `u:pw@host` for a host name: "No such device" at start
        raise ValueError(f"tcp endpoint {redact(endpoint)!r} names a user: write tcp://HOST:PORT; the clients'"
                         " CURVE keys (output.curve) say who may connect")
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
