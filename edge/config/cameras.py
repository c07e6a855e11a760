"""The camera URI language of the config: a scheme, a location and typed parameters, parsed and checked
before anything opens, and shown without credentials. The pipeline (edge/pipeline/cameras.py) opens them.

URIs (an explicit scheme is required):
  file://PATH[?realtime=1&loop=0]     video file; realtime=0 reads as fast as the lanes consume
  test://bars[?fps=30&size=1280x720&frames=N&realtime=1]   synthetic pattern
  v4l2:///dev/videoN[?size=WxH&fps=N]  USB/V4L2 camera
  rtsp://[user:pass@]host[:port]/path[?transport=tcp&timeout=2]   network camera; edge takes these two
                                       parameters out of the query and leaves the camera's own in the URL
  csi://N[?size=WxH&fps=N&flip=M]      Jetson CSI camera through nvarguscamerasrc (GStreamer)
Numbers are finite; fps is 0.01..1000 (a fraction is fine: 29.97), flip 0..7 and a CSI sensor 0..255.
"""
from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("file", "test", "v4l2", "rtsp", "csi")
_PARAMS: dict[str, dict[str, type]] = {
    "file": {"realtime": bool, "loop": bool},
    "test": {"fps": float, "size": str, "frames": int, "realtime": bool},
    "v4l2": {"size": str, "fps": float},
    "rtsp": {"transport": str, "timeout": float},
    "csi": {"size": str, "fps": float, "flip": int},
}
MAX_FRAME = (7680, 4320)         # the largest frame a camera delivers unless its config says otherwise (8K UHD)
FPS_RANGE = (0.01, 1000.0)       # frames a second a camera URI may ask for
FLIP_METHODS = ("none", "counterclockwise 90", "rotate 180", "clockwise 90", "horizontal flip",
                "upper-right diagonal", "vertical flip", "upper-left diagonal")   # nvvidconv's flip-method 0..7
CSI_SENSORS = 256                # nvarguscamerasrc's sensor-id takes 0..255
RTSP_TRANSPORTS = ("tcp", "udp")    # how RTP comes: interleaved in the RTSP TCP session, or UDP (docs/config.md)
RTSP_TRANSPORT = "tcp"              # unless the URI says `transport=`
RTSP_TIMEOUT_S = (0.1, 60.0)        # the range of `timeout=`: a frame must come within it, else the camera stalled


@dataclasses.dataclass(frozen=True)
class CameraURI:
    """A parsed camera URI: scheme, location (path, device, host or sensor; for rtsp the URL to open, edge's
    parameters taken out) and typed parameters."""

    scheme: str
    location: str
    params: dict[str, Any]
    raw: str

    @property
    def lossless(self) -> bool:
        """True when the source should wait for its consumers instead of dropping frames."""
        return self.scheme in ("file", "test") and not self.params.get("realtime", True)

    def redacted(self) -> str:
        """The URI with any credentials replaced, safe to log."""
        return redact(self.raw)


def redact(uri: str) -> str:
    """`uri` with the password replaced by `***`, whatever the URI looks like: the credentials run to the
    last `@` (a password may contain `/`, `:` or `@`), the user name to the first `:` of them."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri                       # no scheme (a config error): credentials all the same
    if "@" not in rest:
        return uri
    credentials, host = rest.rsplit("@", 1)
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"


def check_characters(text: str, what: str) -> None:
    """ValueError unless `text` (a camera URI or an endpoint, `what` in the message) can reach a system call as
    written: no control character, no lone surrogate. The YAML reader refuses them in the file's text (but tab,
    CR and LF), and a double-quoted escape makes them all ("\\x07", "\\ud800"); a surrogate cannot even be
    encoded for the call (UnicodeEncodeError at start). A NUL is refused in every string of a config
    (edge.config.rules)."""
    for char in text:
        if char != "\0" and unicodedata.category(char) == "Cc":
            raise ValueError(f"{what} {redact(text)!r} contains the control character {char!r} (U+{ord(char):04X}),"
                             " which no path, device or host name holds")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {redact(text)!r} contains {exc.object[exc.start]!r}, a lone surrogate (half of"
                         " a UTF-16 pair, from a YAML escape), which UTF-8 cannot encode") from None


def parse_size(text: str) -> tuple[int, int]:
    """`1280x720` -> (1280, 720); ValueError with the rule when malformed."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 1280x720), got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError(f"size {w}x{h} is outside 16..8192 pixels per side")
    return w, h


def _typed(scheme: str, key: str, value: str) -> Any:
    kinds = _PARAMS[scheme]
    if key not in kinds:
        allowed = ", ".join(kinds) or "none"
        raise ValueError(f"unknown parameter {key!r} for {scheme}:// (allowed: {allowed})")
    kind = kinds[key]
    if kind is bool:
        if value not in ("0", "1", "true", "false"):
            raise ValueError(f"parameter {key!r} must be 0 or 1, got {value!r}")
        return value in ("1", "true")
    seconds = " of seconds" if key == "timeout" else ""       # `timeout=2s`: the unit is the rule's
    example = " (e.g. timeout=2)" if key == "timeout" else ""
    try:
        parsed = kind(value)
    except ValueError:
        wanted = f"a number{seconds}" if seconds else kind.__name__
        raise ValueError(f"parameter {key!r} must be {wanted}, got {value!r}{example}") from None
    if kind is float and not math.isfinite(parsed):      # float() takes inf, nan and 1e309 (inf)
        raise ValueError(f"parameter {key!r} must be a finite number{seconds}, got {value!r}{example}")
    if key == "size":
        parse_size(parsed)
    elif key == "fps" and not FPS_RANGE[0] <= parsed <= FPS_RANGE[1]:
        raise ValueError(f"parameter 'fps' must be {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} frames a second, got"
                         f" {value!r} (a fraction is fine: fps=29.97)")
    elif key == "flip" and not 0 <= parsed < len(FLIP_METHODS):
        methods = ", ".join(f"{number} {name}" for number, name in enumerate(FLIP_METHODS))
        raise ValueError(f"parameter 'flip' must be nvvidconv's flip-method 0..{len(FLIP_METHODS) - 1}, got"
                         f" {value!r} ({methods})")
    elif key == "transport" and parsed not in RTSP_TRANSPORTS:
        raise ValueError(f"parameter 'transport' must be {' or '.join(RTSP_TRANSPORTS)}, got {value!r} (tcp, the"
                         " default, suits a vehicle network; udp only where latency matters and the network is clean)")
    elif key == "timeout" and not RTSP_TIMEOUT_S[0] <= parsed <= RTSP_TIMEOUT_S[1]:
        raise ValueError(f"parameter 'timeout' must be {RTSP_TIMEOUT_S[0]:g} to {RTSP_TIMEOUT_S[1]:g} seconds, got"
                         f" {value!r} (the longest wait for a frame before the camera counts as stalled; keep it"
                         " above a few frame intervals: timeout=2 suits 1.5 fps and up)")
    elif kind in (int, float) and parsed < 0:
        raise ValueError(f"parameter {key!r} must not be negative, got {value!r}")
    return parsed


def _rtsp_params(text: str) -> tuple[str, dict[str, Any]]:
    """(the URL to open, edge's typed parameters): `transport` and `timeout` taken out of an rtsp URI's query, every
    other part of it left as written for the camera (many take their own: channel, profile, unicast...)."""
    head, at, tail = text.rpartition("@")             # the query follows the credentials (which may hold a `?`)
    for key in _PARAMS["rtsp"]:                       # ... unless the query holds an `@`: edge's would go unread
        if re.search(f"[?&]{key}(=|&|$)", head):
            raise ValueError(f"rtsp URI {redact(text)!r} has an '@' after its parameter {key!r}: edge reads the user"
                             " and password up to the last '@', so the parameter would reach the camera unread;"
                             " write an '@' in the query as %40")
    path, mark, query = tail.partition("?")
    if not mark:
        return text, {}
    params: dict[str, Any] = {}
    kept = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key in _PARAMS["rtsp"]:
            if key in params:
                raise ValueError(f"rtsp URI {redact(text)!r} gives the parameter {key!r} twice; keep one")
            params[key] = _typed("rtsp", key, value)
        elif key.lower() in _PARAMS["rtsp"]:
            raise ValueError(f"rtsp URI {redact(text)!r} has the parameter {key!r}, which edge would pass to the camera"
                             f" unread: edge's parameters are lower case; write {key.lower()!r}")
        else:
            kept.append(part)
    url = f"{head}{at}{path}" + (f"?{'&'.join(kept)}" if kept else "")
    return url, params


def parse_uri(text: str, *, base_dir: Path | None = None) -> CameraURI:
    """Parse a camera URI; relative file paths resolve against `base_dir`. ValueError says what is wrong."""
    if "://" not in text:
        raise ValueError(f"camera URI {redact(text)!r} has no scheme; write e.g. file://PATH or v4l2:///dev/video0"
                         f" (schemes: {', '.join(SCHEMES)})")
    scheme, rest = text.split("://", 1)
    check_characters(text, "camera URI")
    if scheme not in SCHEMES:                         # redacted: `admin:pw@cam://x` puts a password here
        raise ValueError(f"unknown camera URI scheme {redact(scheme)!r} (known: {', '.join(SCHEMES)})")
    if scheme == "rtsp":
        safe = urlsplit(redact(text))                 # credentials out of the way (and out of any message)
        if not safe.hostname:
            raise ValueError(f"rtsp URI {redact(text)!r} has no host")
        try:
            port_ok = safe.port != 0
        except ValueError:                            # Python rejects ports above 65535 only when asked
            port_ok = False
        if not port_ok:
            raise ValueError(f"rtsp URI {redact(text)!r} has a port outside 1..65535")
        url, params = _rtsp_params(text)
        return CameraURI(scheme, url, params, text)
    location, _, query = rest.partition("?")
    if "@" in query:            # a password with a `?`: its tail would be quoted as a parameter (redact hides it)
        raise ValueError(f"camera URI {redact(text)!r} has an '@' after its '?': {scheme}:// takes no user or"
                         " password, and no parameter holds an '@'")
    params = {k: _typed(scheme, k, v) for k, v in parse_qsl(query, keep_blank_values=True)}
    if not location:
        raise ValueError(f"camera URI {redact(text)!r} names no {'file' if scheme == 'file' else 'device'}")
    if scheme == "file":
        path = Path(location)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        location = str(path)
    elif scheme == "csi":                             # ASCII digits: str.isdigit() takes "²" and "٣" too
        if not (location.isascii() and location.isdigit() and int(location) < CSI_SENSORS):
            raise ValueError(f"csi URI {redact(text)!r} must name a sensor number 0..{CSI_SENSORS - 1}"
                             " (nvarguscamerasrc's sensor-id), e.g. csi://0")
        location = str(int(location))
    elif scheme == "test" and location not in ("bars",):
        raise ValueError(f"unknown test pattern {redact(location)!r} (known: bars)")
    return CameraURI(scheme, location, params, text)
