"""The control socket: operators and field scripts read the daemon's state and change it. `ControlServer`
binds it (bind errors surface in `start`) and serves it from one thread of its own; `request` is the client.

Requests are untrusted input: a frame over TRANSPORT_LIMIT ends its connection in libzmq, a request over
MAX_REQUEST_BYTES gets an error reply, and the rest is unpacked strictly (`edge.wire.protocol.unpack`) and
checked against COMMANDS, so the handler sees valid requests only; a reply never blocks the server. The
commands, replies and limits, and why the socket is an ipc-only ROUTER in a ZeroMQ context of its own with no
connection gate: docs/protocol.md, "Control socket".
"""
from __future__ import annotations

import collections
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from edge.config.precision import MODES
from edge.config.wire import NAME_BYTES, NAME_PATTERN
from edge.errors import EdgeError, ProtocolError, UsageError
from edge.log import get_logger
from edge.wire import ipc, protocol
from edge.wire.peers import SUMMARY_EVERY_S

log = get_logger("control")
Handler = Callable[[str, dict[str, Any]], dict[str, Any]]
MAX_REQUEST_BYTES = 1024          # the largest valid request is 100 bytes
TRANSPORT_LIMIT = 4096            # ZMQ_MAXMSGSIZE: a larger frame ends its connection, no reply possible
MAX_REPLY_BYTES = protocol.MAX_MESSAGE_BYTES
PEER_HWM = 16                     # requests queued from one connection, replies queued to one
BATCH = 64                        # requests served between two looks at the stop signal
HANDSHAKE_MS = 2000
NAME_RULE = f"1 to {NAME_BYTES} letters, digits, _ or -"
CONTROL_SETTING = "control.endpoint / EDGE_CONTROL_ENDPOINT"
CLIENT_SETTING = "--control / EDGE_CONTROL_ENDPOINT"
NOT_RUNNING_HINT = "is the daemon running? `systemctl status edge-runtime`, or start one with `edge run`"
_NAME = re.compile(NAME_PATTERN)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_name(value: object) -> str | None:
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return f"must be a name of {NAME_RULE}, got {_show(value)}"


def _check_mode(value: object) -> str | None:
    if isinstance(value, str) and value in MODES:
        return None
    return f"must be one of {', '.join(MODES)}, got {_show(value)}"


# command -> its arguments, each with its check (None when the value is valid, else what is wrong)
COMMANDS: dict[str, dict[str, Callable[[object], str | None]]] = {
    "status": {},
    "task.enable": {"task": _check_name},
    "task.disable": {"task": _check_name},
    "precision.set": {"task": _check_name, "mode": _check_mode},
    "reload": {},
}


def check_request(request: object) -> tuple[str, dict[str, Any]]:
    """(cmd, args) of a decoded request; ProtocolError saying what is wrong with it."""
    if not isinstance(request, dict):
        raise ProtocolError(f"a request is a msgpack map {{'cmd': ..., ...}}, got {type(request).__name__}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(f"a request needs 'cmd', one of {', '.join(COMMANDS)}; got {_show(cmd)}")
    schema = COMMANDS.get(cmd)
    if schema is None:
        raise ProtocolError(f"unknown command {_show(cmd)}; known: {', '.join(COMMANDS)}")
    args = {key: value for key, value in request.items() if key != "cmd"}
    takes = f"it takes {', '.join(schema) or 'no arguments'}"
    unknown = sorted(_show(key) for key in args if key not in schema)     # keys may be str or bytes
    if unknown:
        raise ProtocolError(f"{cmd}: unknown argument(s) {', '.join(unknown[:5])}; {takes}")
    for key, check in schema.items():
        if key not in args:
            raise ProtocolError(f"{cmd}: missing argument {key!r}; {takes}")
        problem = check(args[key])
        if problem:
            raise ProtocolError(f"{cmd}: {key!r} {problem}")
    return cmd, args


def parse_request(body: list[bytes]) -> tuple[str, dict[str, Any]]:
    """(cmd, args) of a request's frames (after its envelope); ProtocolError saying what is wrong."""
    if not body or body == [b""]:
        raise ProtocolError("empty request; a request is one frame, a msgpack map {'cmd': ..., ...}")
    if len(body) != 1:
        raise ProtocolError(f"a request is one frame, a msgpack map; got {len(body)} frames")
    data = body[0]
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request of {len(data)} bytes is larger than the limit of {MAX_REQUEST_BYTES} bytes")
    return check_request(protocol.unpack(data, max_bytes=MAX_REQUEST_BYTES))


def _split(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(envelope, body): the routing id, with the empty delimiter a REQ client adds, and what follows."""
    if len(frames) > 1 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _endpoint_path(endpoint: str, setting: str) -> Path:
    """The socket file of an ipc:// control endpoint; EdgeError for anything else."""
    path = protocol.ipc_path(endpoint)
    if path is None or not path.is_absolute():
        raise EdgeError(f"control endpoint {endpoint!r:.200} is not ipc:///ABSOLUTE/PATH",
                        note="tcp would let any local process command the daemon",
                        hint=f"set {setting} to e.g. ipc:///run/edge/control.sock")
    return path


class _Refusals:
    """Refused requests and dropped replies since the last summary line (used by the server thread only)."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._last = ""
        self._logged = -math.inf

    def note(self, what: str, example: str) -> None:
        self._counts[what] += 1
        self._last = example

    def summary(self, *, final: bool = False) -> None:
        """One line with the counts, at most once per SUMMARY_EVERY_S (`final`: now), when there are any."""
        now = time.monotonic()
        if not self._counts or (now - self._logged < SUMMARY_EVERY_S and not final):
            return
        happened = ", ".join(f"{n} {what}" for what, n in sorted(self._counts.items()))
        log.warning("control socket: %s since the last line; the last: %s", happened, self._last)
        self._counts, self._last, self._logged = collections.Counter(), "", now


class ControlServer:
    """Serves control requests on an ipc endpoint in a thread of its own (docs/protocol.md, "Control socket")."""

    def __init__(self, endpoint: str, handler: Handler, *, context: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._context = context
        self._own_context: zmq.Context[Any] | None = None
        self._wake: ipc.Waker | None = None
        self._thread: threading.Thread | None = None
        self._refusals = _Refusals()
        self.requests = 0      # valid requests handed to the handler
        self.refused = 0       # malformed requests, answered with an error
        self.dropped = 0       # replies libzmq could not queue (the client does not read them, or has gone)

    def start(self) -> None:
        """Bind the socket (errors surface here as EdgeError) and start serving."""
        if self._thread is not None:
            raise UsageError(f"control server on {self.endpoint} is started already", hint="call stop() first")
        path = _endpoint_path(self.endpoint, CONTROL_SETTING)
        ipc.prepare(path, what="control endpoint", setting=CONTROL_SETTING)
        context = self._context or zmq.Context(io_threads=1)
        try:
            sock = self._bind(context, path)
        except EdgeError:
            if context is not self._context:
                context.term()
            raise
        self._own_context = None if context is self._context else context
        self._wake = ipc.Waker()
        self._thread = threading.Thread(target=self._run, args=(sock, self._wake), name="control", daemon=True)
        self._thread.start()
        log.info("control socket on %s", self.endpoint)

    def _bind(self, context: zmq.Context[Any], path: Path) -> zmq.Socket[Any]:
        """A ROUTER listening on `path`. It binds under a hidden random name, is made 0600 and only then
        renamed to `path`, so nobody can connect while it has the mode the umask gave it."""
        sock = context.socket(zmq.ROUTER)
        for option, value in ((zmq.LINGER, 0), (zmq.MAXMSGSIZE, TRANSPORT_LIMIT), (zmq.RCVHWM, PEER_HWM),
                              (zmq.SNDHWM, PEER_HWM), (zmq.ROUTER_MANDATORY, 1), (zmq.HANDSHAKE_IVL, HANDSHAKE_MS)):
            sock.setsockopt(option, value)
        hidden = path.with_name(f".{secrets.token_hex(4)}")
        try:
            sock.bind(f"ipc://{hidden}")
            os.chmod(hidden, 0o600)
            os.rename(hidden, path)
        except (zmq.ZMQError, OSError) as exc:
            sock.close(linger=0)
            hidden.unlink(missing_ok=True)
            raise EdgeError(f"cannot bind control endpoint {self.endpoint}: {exc.strerror}",
                            note=f"bound first as {hidden}, then renamed",
                            hint=f"check that {path.parent} is writable by this user, or set {CONTROL_SETTING}"
                                 " to another path") from exc
        return sock

    def stop(self, timeout: float) -> None:
        """End the serving thread (it closes the socket), then remove the socket file; bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        if self._thread is not None and self._wake is not None:
            self._wake.notify()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("control thread did not stop within %.1f s (a command still running?)", timeout)
                return
            path = _endpoint_path(self.endpoint, CONTROL_SETTING)
            ipc.wait_released(path, max(0.0, deadline - time.monotonic()))
            ipc.remove_own_socket(path)
        if self._own_context is not None:
            self._own_context.term()    # its only socket is closed
            self._own_context = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        self._thread = None

    def _run(self, sock: zmq.Socket[Any], wake: ipc.Waker) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while wake.fileno() not in dict(poller.poll(int(SUMMARY_EVERY_S * 1000))):   # fds come back as int
                self._serve(sock)
                self._refusals.summary()
        finally:
            sock.close(linger=0)
            self._refusals.summary(final=True)

    def _serve(self, sock: zmq.Socket[Any]) -> None:
        """Answer up to BATCH waiting requests."""
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = _split(frames)
            self._reply(sock, [*envelope, self._answer(body)])

    def _reply(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        """Send without blocking; drop the reply when its client has PEER_HWM replies unread, or has gone.
        libzmq learns that a client read its replies from commands that it processes at most every
        millisecond or so in send(): before a reply counts as not fitting, they are processed (ZMQ_EVENTS)
        and the send is tried again. Otherwise a client asking quickly in turn could lose a reply."""
        error: zmq.ZMQError | None = None
        for _ in range(2):
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return
            except zmq.Again as exc:
                error = exc
                sock.getsockopt(zmq.EVENTS)
            except zmq.ZMQError as exc:         # EHOSTUNREACH: it has gone
                error = exc
                break
        self.dropped += 1
        self._refusals.note("replies dropped", f"a reply its client did not take ({error})")

    def _answer(self, body: list[bytes]) -> bytes:
        try:
            cmd, args = parse_request(body)
        except ProtocolError as exc:
            self.refused += 1
            self._refusals.note("requests refused", exc.what)
            return protocol.pack({"ok": False, "error": exc.what})
        self.requests += 1
        return self._call(cmd, args)

    def _call(self, cmd: str, args: dict[str, Any]) -> bytes:
        """The handler's reply, packed; EdgeError is the client's error, anything else is ours (logged)."""
        try:
            result = self._handler(cmd, args)
            if not isinstance(result, dict):
                raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
            return protocol.pack({**result, "ok": True})
        except EdgeError as exc:
            return protocol.pack({"ok": False, "error": exc.render()})
        except Exception as exc:  # noqa: BLE001 - a failing command must not end the control socket
            log.exception("internal error serving %s %s", cmd, args)
            return protocol.pack({"ok": False, "error": f"internal error serving {cmd} ({type(exc).__name__});"
                                                        " the daemon's log has the traceback"})


# ---------------------------------------------------------------------------------------------- the client

def request(endpoint: str, cmd: str, *, timeout_s: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the reply's result (the reply without `ok`). EdgeError when the request
    is not valid, nothing listens on `endpoint`, no reply comes within `timeout_s`, the reply is malformed,
    or the daemon answers ok: false (its error text)."""
    cmd, args = check_request({**args, "cmd": cmd})
    path = _endpoint_path(endpoint, CLIENT_SETTING)
    # the socket is 0600: only its owner and root can use it, so the directory must be ours unless we are root
    ipc.check_dir(path.parent, owner=None if os.geteuid() == 0 else os.geteuid(), setting=CLIENT_SETTING)
    if not ipc.listening(path):
        found = "no such file" if not path.exists() and not path.is_symlink() else "a file nothing listens on"
        raise EdgeError(f"cannot reach the edge daemon: nothing listens on {endpoint}", note=f"found: {found}",
                        hint=f"{NOT_RUNNING_HINT}; or pass the daemon's endpoint with {CLIENT_SETTING}")
    context = zmq.Context(io_threads=1)
    sock = context.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        sock.connect(endpoint)
        frames = _exchange(sock, protocol.pack({"cmd": cmd, **args}), timeout_s)
    finally:
        sock.close(linger=0)
        context.term()
    if frames is None:
        raise EdgeError(f"no reply from the edge daemon on {endpoint} within {timeout_s:g} s", note=f"command: {cmd}",
                        hint=f"{NOT_RUNNING_HINT}; a busy daemon may need a longer --timeout")
    return _result(endpoint, cmd, frames)


def _exchange(sock: zmq.Socket[Any], data: bytes, timeout_s: float) -> list[bytes] | None:
    """The reply's frames, or None when none came within `timeout_s`."""
    try:
        sock.send(data, flags=zmq.NOBLOCK)
    except zmq.Again:
        return None
    if not sock.poll(max(1, int(timeout_s * 1000))):
        return None
    return sock.recv_multipart()


def _result(endpoint: str, cmd: str, frames: list[bytes]) -> dict[str, Any]:
    def malformed(what: str) -> EdgeError:
        return EdgeError(f"malformed reply to {cmd} from {endpoint}: {what}",
                         hint="is an edge daemon of this version listening there? (`edge --version`)")

    if len(frames) != 1:
        raise malformed(f"{len(frames)} frames, expected one")
    try:
        reply = protocol.unpack(frames[0], max_bytes=MAX_REPLY_BYTES)
    except ProtocolError as exc:
        raise malformed(exc.what) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise malformed(f"expected a map with 'ok' true or false, got {_show(reply)}")
    if not reply["ok"]:
        error = reply.get("error")
        if not isinstance(error, str):
            raise malformed(f"ok is false and 'error' is {_show(error)}, not text")
        raise EdgeError(f"the edge daemon refused {cmd}: {error}")
    return {key: value for key, value in reply.items() if key != "ok"}
