"""Subscriber helper for vehicle software: decode schema v1, detect seq gaps, latest-only mode.

    with Subscriber("ipc:///run/edge/results.sock", topics=["det."]) as sub:
        msg = sub.recv(timeout=1.0)      # Message or None
        print(msg.topic, msg.payload["detections"], sub.missed)

Incoming data is untrusted: payloads over `max_bytes` are skipped, msgpack is unpacked with
limits and no ext types, and the schema is checked. Invalid messages are skipped and counted
(`invalid`, `last_error`), never raised. The transport bounds memory too (MAXMSGSIZE,
TRANSPORT_LIMIT): libzmq drops a connection whose peer sends more, and does not reconnect it.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq
import zmq.auth

from edge.config.wire import default_results_endpoint
from edge.errors import EdgeError, ProtocolError
from edge.log import get_logger
from edge.wire import ipc, protocol

log = get_logger("client")
TRANSPORT_LIMIT = 64 << 20
SILENCE_NOTICE_S = 3.0        # first "nothing received" notice of `edge subscribe`
SILENCE_REPEAT_S = 10.0       # then once per this much continued silence


@dataclasses.dataclass(frozen=True)
class Message:
    topic: str
    payload: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.payload["seq"])


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """A subscriber's CURVE keys (Z85): its own pair, and the daemon's public key."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, client_secret: Path, server_public: Path) -> CurveKeys:
        """From ZeroMQ certificate files: this client's NAME.key_secret and the daemon's NAME.key."""
        try:
            public, secret = zmq.auth.load_certificate(str(client_secret))
            server, _ = zmq.auth.load_certificate(str(server_public))
        except (OSError, ValueError) as exc:
            raise EdgeError(f"cannot read the CURVE keys: {exc}", note=f"{client_secret}, {server_public}",
                            hint="`edge curve-keys DIR NAME` makes a pair; the daemon's operator gives you its"
                                 " public NAME.key and adds yours to output.curve.clients") from exc
        if not secret:
            raise EdgeError(f"{client_secret} holds no secret key", hint="give this client's NAME.key_secret")
        return cls(public, secret, server)


class Subscriber:
    def __init__(self, endpoint: str | None = None, topics: Iterable[str] = ("",), *,
                 latest_only: bool = False, max_bytes: int = protocol.MAX_MESSAGE_BYTES,
                 context: zmq.Context[Any] | None = None, curve: CurveKeys | None = None) -> None:
        self.endpoint = endpoint or default_results_endpoint()
        path = protocol.ipc_path(self.endpoint)
        if path is not None:
            # the default path is per user, so its directory must be ours; any directory must be safe
            ipc.check_dir(path.parent, owner=os.geteuid() if endpoint is None else None,
                          setting="EDGE_RESULTS_ENDPOINT")
        self.latest_only = latest_only
        self.max_bytes = max_bytes
        self.missed = 0              # messages lost upstream, from seq gaps
        self.invalid = 0
        self.last_error = ""
        self._last_seq: dict[str, int] = {}
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(TRANSPORT_LIMIT, max_bytes))
        self._socket.setsockopt(zmq.IPV6, 1)
        if curve is not None:
            self._socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
            self._socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(self.endpoint)

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message (latest-only: the newest one waiting), or None after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._socket.poll(None if remaining is None else int(remaining * 1000)):
                return None
            newest = self._drain()
            if newest is not None:
                return newest
            # only invalid messages were waiting: keep waiting for a valid one until the deadline

    def _drain(self) -> Message | None:
        """The first valid waiting message (latest-only: the newest), None when none of them is valid."""
        newest = None
        while True:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return newest
            message = self._decode(frames)
            if message is not None:
                if not self.latest_only:
                    return message
                newest = message

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _decode(self, frames: list[bytes]) -> Message | None:
        try:
            if len(frames) != 2:
                raise ProtocolError(f"expected 2 frames [topic, payload], got {len(frames)}")
            topic = frames[0].decode("utf-8")
            payload = protocol.validate(topic, protocol.unpack(frames[1], max_bytes=self.max_bytes))
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.invalid += 1
            self.last_error = str(exc)
            log.debug("skipped invalid message: %s", exc)
            return None
        self._track(topic, payload["seq"])
        return Message(topic, payload)

    def _track(self, topic: str, seq: int) -> None:
        last = self._last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
        self._last_seq[topic] = seq


class SilenceNotice:
    """Says when a subscriber hears nothing: after `after_s` s of silence, then every `every_s` s more.

    Clock-driven and free of sockets and threads: call `heard()` for each message and `due()` from the
    receive loop; `due()` returns the notice text at most once per period, else None. A message resets
    it. `after_s <= 0` turns it off. `now` (time.monotonic() seconds) is for tests.
    """

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), *, after_s: float = SILENCE_NOTICE_S,
                 every_s: float = SILENCE_REPEAT_S, curve: bool = False, now: float | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.topics = [t for t in topics if t]
        self.after_s = after_s
        self.every_s = every_s
        self.received = 0
        self._since = time.monotonic() if now is None else now
        self._next = after_s

    def heard(self, *, now: float | None = None) -> None:
        self.received += 1
        self._since = time.monotonic() if now is None else now
        self._next = self.after_s

    def due(self, *, invalid: int = 0, now: float | None = None) -> str | None:
        silent = (time.monotonic() if now is None else now) - self._since
        if self.after_s <= 0 or silent < self._next:
            return None
        periods = 1 + int((silent - self._next) // self.every_s)     # one notice, even after a long stall
        self._next += periods * self.every_s
        return self._text(silent, invalid)

    def _text(self, silent: float, invalid: int) -> str:
        what = "nothing valid" if invalid else "nothing"
        when = f"for {_seconds(silent)} s since the last message" if self.received else f"in {_seconds(silent)} s"
        details = [f"skipped {invalid} invalid message(s)"] if invalid else []
        details += [text for text in (endpoint_state(self.endpoint), curve_advice(self.endpoint, self.curve)) if text]
        topics = f" on topic(s) {', '.join(self.topics)}" if self.topics else ""
        return (f"{what} received from {self.endpoint} {when}" + (f" ({'; '.join(details)})" if details else "")
                + f"; is `edge run` running and publishing there{topics}? (still waiting)")


def endpoint_state(endpoint: str) -> str:
    """For an ipc:// endpoint, whether its socket file exists ('socket file /x exists'); else ''."""
    path = protocol.ipc_path(endpoint)
    if path is None or not path.is_absolute():
        return ""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"no socket file {path}"
    except OSError as exc:
        return f"socket file {path} cannot be checked: {exc.strerror}"
    return f"socket file {path} exists" if stat.S_ISSOCK(mode) else f"{path} exists but is not a socket"


def curve_advice(endpoint: str, curve: bool) -> str:
    """For a tcp endpoint, which CURVE set-up receives nothing (edge serves tcp only with CURVE); else ''."""
    if not endpoint.startswith("tcp://"):
        return ""
    if not curve:
        return "edge serves tcp only with CURVE: pass --curve CLIENT.key_secret SERVER.key"
    return ("with CURVE, nothing arrives while the daemon's output.curve.clients lacks this client's public key or"
            " SERVER.key is not the daemon's public key; the daemon logs the connections it refused")


def _seconds(value: float) -> str:
    return f"{round(value) if value >= 1 else round(value, 1):g}"
