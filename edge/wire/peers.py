"""Who may connect to the results socket, and what each connection may hold there.

A bound XPUB in libzmq 4.3 has no limit per peer, so two parts add them: `Gate` (a thread of its own:
ZAP admission by rate and count per source, the socket monitor to close connections over the limits
before their handshake, failed handshakes counted) and `Subscriptions` (in the publishing thread,
XPUB_MANUAL: only prefixes of edge's own topics, a bounded number per connection, kept exactly as long
as the connection). docs/reliability.md ("How the results socket enforces its limits") says how and why.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85

from edge.errors import EdgeError
from edge.log import get_logger
from edge.wire import ipc, protocol

log = get_logger("publisher")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"     # fixed by the ZAP protocol (ZeroMQ RFC 27)
SUMMARY_EVERY_S = 10.0                      # connection comings and goings: one log line per interval
# what the gate reads from the socket monitor; a failed handshake (libzmq 4.3.5) names no peer, only its error
MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
RESERVED_FDS = 64                           # never given to peers: camera reopen, logs, engine files
BURST_FDS = 1024      # connections libzmq may accept before the gate closes them (up to ~800 measured)


@dataclasses.dataclass(frozen=True)
class Limits:
    peers: int = 128                    # connections at once, from everyone
    peers_per_source: int = 64          # from one uid (ipc) or one address (tcp)
    admit_per_s: float = 20.0           # new connections a second from one source, after a burst of
    admit_burst: int = 64
    subscriptions_per_peer: int = 64    # topic prefixes one connection may hold

    def within_open_files(self) -> Limits:
        """These limits, with `peers` lowered where needed so that peers never take the fds the process
        needs. Warns when the limit leaves too little room for a burst of connections in flight."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = _open_fds()
        room = soft - used - RESERVED_FDS
        limits = self
        if room < self.peers:
            peers = max(1, room)
            log.warning("the open files limit (%d) leaves room for %d subscriber connections, not %d; raise"
                        " LimitNOFILE (systemd) or ulimit -n", soft, peers, self.peers)
            limits = dataclasses.replace(self, peers=peers, peers_per_source=min(self.peers_per_source, peers))
        if room - limits.peers < BURST_FDS:
            log.warning("the open files limit (%d) leaves %d fds for connections the gate has not closed yet;"
                        " a burst of more connections than that at once can reach the limit, and libzmq"
                        " aborts the process then (ipc); raise LimitNOFILE (systemd) or ulimit -n to %d or"
                        " more", soft, max(0, room - limits.peers), used + RESERVED_FDS + limits.peers + BURST_FDS)
        return limits


def raise_open_files_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open files limit raised from %d to %d", soft, hard)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class Activity:
    """What happened to connections since the last summary line; written by both threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._last = ""
        self._logged = -SUMMARY_EVERY_S

    def note(self, what: str, example: str = "") -> None:
        with self._lock:
            self._counts[what] += 1
            self._last = example or self._last

    def summary(self, state: str, *, now: float | None = None, final: bool = False) -> None:
        """Log the counts with `state`, at most once per SUMMARY_EVERY_S (`final`: now) and only when
        something happened."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._counts or (now - self._logged < SUMMARY_EVERY_S and not final):
                return
            counts, last = self._counts, self._last
            self._counts, self._last, self._logged = collections.Counter(), "", now
        happened = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        if last:
            log.warning("%s; since the last line: %s; the last refusal: %s", state, happened, last)
        else:
            log.info("%s; since the last line: %s", state, happened)


@dataclasses.dataclass(frozen=True)
class Curve:
    """CURVE for the results socket: the daemon's key pair and the public keys of the subscribers allowed in
    (Z85 text, as ZeroMQ's certificate files hold them)."""

    public: bytes
    secret: bytes
    clients: frozenset[bytes]

    @classmethod
    def load(cls, secret_key: Path, clients: Path) -> Curve:
        """Read the keys; EdgeError (the start fails: tcp is never served without them) when they are unusable."""
        hint = "make them with `edge curve-keys DIR NAME` (the daemon's NAME.key_secret; clients' NAME.key)"
        try:
            public, secret = zmq.auth.load_certificate(str(secret_key))
            allowed = zmq.auth.load_certificates(str(clients)) if clients.is_dir() else None
        except (OSError, ValueError) as exc:
            raise EdgeError(f"cannot read the CURVE keys: {exc}", note=f"secret_key {secret_key}, clients {clients}",
                            hint=hint) from exc
        if not secret:
            raise EdgeError(f"{secret_key} holds no secret key", note="it is a public certificate (NAME.key)",
                            hint="point output.curve.secret_key at NAME.key_secret")
        misplaced = sorted(path.name for path in clients.glob("*.key_secret")) if clients.is_dir() else []
        if misplaced:                         # load_certificates reads *.key only
            log.warning("%s holds secret key file(s) %s: only public NAME.key files there let subscribers in, and a"
                        " secret key belongs to its owner alone; move each out, and put its owner's public NAME.key"
                        " there instead", clients, ", ".join(misplaced))
        if not allowed:
            raise EdgeError(f"no client certificates (*.key) in {clients}: no subscriber could connect",
                            hint=f"copy the subscribers' public NAME.key files there; {hint}")
        return cls(public, secret, frozenset(allowed))


class Gate:
    """Admits and counts connections in a thread of its own (see the module doc)."""

    def __init__(self, context: zmq.Context[Any], monitor: zmq.Socket[Any], limits: Limits,
                 is_listener: Callable[[socket.socket], bool], activity: Activity, *,
                 clients: frozenset[bytes] | None = None) -> None:
        self.limits = limits
        self._clients = clients               # CURVE: the public keys allowed in; None: no CURVE
        self._monitor = monitor
        self._is_listener = is_listener
        self._activity = activity
        self._zap = context.socket(zmq.ROUTER)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)          # EADDRINUSE: another handler in this context
        self._wake = ipc.Waker()
        self._fds: dict[int, str] = {}        # open connections: fd -> source
        self._sources: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, tuple[float, float]] = {}   # source -> (tokens, when)
        self._ids = 0                         # the last connection number given
        self._ended: dict[int, int] = {}      # fd -> the last number given before its latest DISCONNECTED
        self.disconnects = 0                  # DISCONNECTED events read
        self.connected = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="publisher-gate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """End the thread, then close its sockets (the monitor socket too)."""
        if self._thread.is_alive():
            self._wake.notify()
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("connection gate thread did not stop within %.1f s", timeout)
            return
        self._zap.close(linger=0)
        self._monitor.close(linger=0)
        self._wake.close()

    def _run(self) -> None:
        poller = zmq.Poller()
        for item in (self._monitor, self._zap, self._wake):
            poller.register(item, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake.fileno() in ready:
                return
            self._read_monitor()               # first: a connection's ACCEPTED precedes its ZAP request
            self._answer_zap()

    def _read_monitor(self) -> None:
        while True:
            try:
                event, _ = self._monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = struct.unpack("=HI", event[:6])     # value: the fd, or the handshake's error
            if kind == zmq.EVENT_ACCEPTED:
                self._accepted(value)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._ended[value] = self._ids
                self.disconnects += 1          # after `_ended`: the publishing thread reads them in this order
                self._closed(value)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._refuse(self._broken_handshake(value))

    def _accepted(self, fd: int) -> None:
        self._closed(fd)                       # a reused fd number whose DISCONNECTED came first
        source = _source(fd)
        why = self._over(source)
        if why:
            self._refuse(why)
            _shutdown(fd, self._is_listener)   # not counted: it is gone once libzmq sees the shutdown
            return
        self._fds[fd] = source
        self._sources[source] += 1
        self.connected += 1

    def _closed(self, fd: int) -> None:
        source = self._fds.pop(fd, None)
        if source is None:
            return
        self.connected -= 1
        self._sources[source] -= 1
        if not self._sources[source]:
            del self._sources[source]

    def _over(self, source: str) -> str:
        """Why one more connection from `source` is over a limit ('' when it is not)."""
        if self.connected >= self.limits.peers:
            return f"{self.connected} connections open (limit {self.limits.peers})"
        if self._sources[source] >= self.limits.peers_per_source:
            return f"{source} holds {self._sources[source]} connections (limit {self.limits.peers_per_source})"
        return ""

    def _broken_handshake(self, error: int) -> str:
        """What a handshake libzmq broke off for a protocol error says of its peer. libzmq 4.3.5 asks ZAP only
        once the greetings name the same mechanism and, with CURVE, the client's boxes open: a peer without CURVE
        on a CURVE endpoint (or the other way round) ends at the greeting (src/zmtp_engine.cpp), one with another
        server key at HELLO (src/curve_server.cpp)."""
        if error == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return ("a peer without CURVE on this CURVE endpoint (a subscriber without its keys?)"
                    if self._clients is not None else "a CURVE peer on this endpoint without CURVE")
        if error == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return ("a CURVE handshake this daemon cannot decrypt (a subscriber with another server key than this"
                    " daemon's public key?)")
        return f"a handshake that broke the protocol (libzmq error {error:#x})"

    def ended(self, conn: int, fd: int) -> bool:
        """Whether connection number `conn`, whose messages carry `fd`, has closed, as far as the monitor has told
        (the publishing thread asks). An fd number is reused, a connection number never. libzmq 4.3.5 sends
        DISCONNECTED before it closes the fd (src/stream_engine_base.cpp error: event_disconnected, then the
        destructor's close), so the next connection on that fd number sends its ZAP request after the event,
        and `_answer_zap` reads the monitor before it numbers that connection. A connection that sends messages
        was numbered before its handshake ended, so before its DISCONNECTED. Hence numbers up to `_ended[fd]` are
        of connections on `fd` that have closed, later ones of the one there now. `_ended` holds a number per
        fd number: the open files limit bounds it."""
        return conn <= self._ended.get(fd, 0)

    def _answer_zap(self) -> None:
        """ZAP (RFC 27): [routing id, '', version, request id, domain, address, identity, mechanism, ...]. The
        monitor is read after the requests and before the answers (see `ended`)."""
        requests = []
        while True:
            try:
                requests.append(self._zap.recv_multipart(flags=zmq.NOBLOCK))
            except zmq.Again:
                break
        if requests:
            self._read_monitor()
        for frames in requests:
            if len(frames) < 8:
                continue
            route, _, version, request = frames[:4]
            source = _zap_source(frames[5].decode("utf-8", "replace"))
            why = self._unknown_key(frames[7], frames[8:]) or self._rate(source)
            if why:
                self._refuse(why)
                reply = [b"400", why.encode(), b""]
            else:
                self._ids += 1
                reply = [b"200", b"OK", str(self._ids).encode()]
            self._zap.send_multipart([route, b"", version, request, *reply, b""])

    def _unknown_key(self, mechanism: bytes, credentials: list[bytes]) -> str:
        """Why a peer is not one of the CURVE clients allowed in ('' when it is, or without CURVE)."""
        if self._clients is None:
            return ""
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return f"mechanism {mechanism.decode('ascii', 'replace')!r} where CURVE is required"
        key = zmq.utils.z85.encode(credentials[0])
        return "" if key in self._clients else f"client key {key[:8].decode()}... is not in output.curve.clients"

    def _rate(self, source: str) -> str:
        """A token bucket per source: `admit_burst` at once, then `admit_per_s`."""
        now = time.monotonic()
        tokens, when = self._buckets.get(source, (float(self.limits.admit_burst), now))
        tokens = min(float(self.limits.admit_burst), tokens + (now - when) * self.limits.admit_per_s)
        if len(self._buckets) > 4 * self.limits.peers:
            self._buckets.clear()              # forget idle sources (each one starts with a full bucket)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return f"{source} connects faster than {self.limits.admit_per_s:g}/s"
        self._buckets[source] = (tokens - 1, now)
        return ""

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self._activity.note("connections refused", f"refused a connection: {why}")


class Subscriptions:
    """The subscriptions the publishing thread applies (XPUB_MANUAL), counted over all connections.

    libzmq notes every (un)subscription a connection sends, before the daemon sees it: the refused ones, and
    those that end a multipart message, too. When a connection closes, it sends one unsubscription per prefix
    noted for it, without the connection's metadata (libzmq 4.3.5 src/xpub.cpp: xread_activated,
    xpipe_terminated). So the counts follow libzmq's notes: per prefix, the connections it is applied for
    (`_held`) and those it was noted for and refused on (`_refused`). An unsubscription without metadata takes
    from `_refused` first: the daemon closes a connection at its first refusal, so its unsubscriptions are the
    ones due; whichever order they come in, both counts are right once the connections involved have closed.

    What libzmq noted for each connection is kept from its first message until it has closed and all it sent
    has been read (`emptied`), never longer, so that memory follows the connections the gate admits. A message
    read after its connection closed is judged and counted as if read in time, but nothing is applied for it
    and nothing shut down: its fd number may be another connection's by then.
    """

    def __init__(self, limits: Limits, gate: Gate, is_listener: Callable[[socket.socket], bool],
                 activity: Activity) -> None:
        self.limits = limits
        self._gate = gate
        self._is_listener = is_listener
        self._activity = activity
        self._held: collections.Counter[bytes] = collections.Counter()
        self._refused: collections.Counter[bytes] = collections.Counter()
        self._peers: dict[int, tuple[int, dict[bytes, bool]]] = {}    # connection: (fd, {prefix: applied})
        self._closing: set[int] = set()      # connections seen closed since the socket was last read empty
        self._disconnects = 0                # the gate's count when the connections were last looked at
        self.subscriptions = 0
        self.rejected = 0

    def inbound(self, conn: int | None, fd: int | None, frames: list[bytes]) -> tuple[bool, bytes] | None:
        """A message from connection number `conn` (libzmq's User-Id) on `fd`; both None for inproc peers and
        for the unsubscriptions libzmq makes when a connection closes. Returns (subscribe, prefix) to apply for
        that connection, or None to ignore the message."""
        mine, ended = None, False
        if conn is not None and fd is not None:
            mine = self._peers.setdefault(conn, (fd, {}))[1]
            ended = self._gate.ended(conn, fd)
            if ended:                          # judged all the same, but nothing applied and nothing shut down
                self._closing.add(conn)
                fd = None
        if len(frames) == 1 and frames[0][:1] in _FLAGS:
            action = self._subscription(mine, fd, frames[0][0] == 1, frames[0][1:])
            return None if ended else action
        for frame in frames:
            if frame[:1] in _FLAGS:            # noted by libzmq all the same; refused here with the message
                if frame[0] == 1:
                    self._note(mine, frame[1:], applied=False)
                else:
                    self._forget(mine, frame[1:])
        return self._reject(fd, "a message that is not a subscription")

    def emptied(self) -> None:
        """The socket had no message left: forget the connections seen closed before, and look for the ones
        that closed since. libzmq has passed a connection's messages on by the time the gate reads its
        DISCONNECTED (it flushes the last ones right after sending the event, src/stream_engine_base.cpp
        error), and a read that finds nothing has taken in all libzmq passed on (src/socket_base.cpp recv
        processes the pending commands first). So a connection seen closed has nothing left to read once the
        socket has been read empty after that."""
        for conn in self._closing:
            del self._peers[conn]
        self._closing = set()
        disconnects = self._gate.disconnects
        if disconnects != self._disconnects:
            self._disconnects = disconnects
            self._closing = {conn for conn, (fd, _) in self._peers.items() if self._gate.ended(conn, fd)}

    def _subscription(self, mine: dict[bytes, bool] | None, fd: int | None, subscribe: bool,
                      prefix: bytes) -> tuple[bool, bytes] | None:
        if not subscribe:
            return (False, prefix) if self._forget(mine, prefix) else None
        applied = None if mine is None else mine.get(prefix)
        if applied:                            # libzmq notes a prefix once per connection
            return True, prefix
        if applied is not None:
            return self._reject(fd, f"subscription {prefix[:40]!r} once more after its refusal")
        why = self._refusal(mine, prefix)
        self._note(mine, prefix, applied=not why)
        return self._reject(fd, why) if why else (True, prefix)

    def _refusal(self, mine: dict[bytes, bool] | None, prefix: bytes) -> str:
        """Why a new subscription is refused ('' when it is not)."""
        if not protocol.is_topic_prefix(prefix):
            return f"subscription {prefix[:40]!r}, not a prefix of an edge topic"
        held = 0 if mine is None else sum(mine.values())
        if held >= self.limits.subscriptions_per_peer:
            return f"subscription number {held + 1} on one connection (limit {self.limits.subscriptions_per_peer})"
        return ""

    def _note(self, mine: dict[bytes, bool] | None, prefix: bytes, *, applied: bool) -> None:
        if mine is not None:
            if prefix in mine:
                return                         # noted once
            mine[prefix] = applied
        (self._held if applied else self._refused)[prefix] += 1
        if applied:
            self.subscriptions += 1
            self._activity.note("subscriptions accepted")

    def _forget(self, mine: dict[bytes, bool] | None, prefix: bytes) -> bool:
        """An unsubscription; True when it ends an applied subscription (to unapply for its connection)."""
        if mine is not None:                   # the connection's own: what libzmq noted for it, if anything
            if prefix not in mine:
                return False
            applied = mine.pop(prefix)
        elif self._refused[prefix]:            # libzmq's for a closed connection, or an inproc peer's
            applied = False
        elif self._held[prefix]:
            applied = True
        else:
            return False
        counts = self._held if applied else self._refused
        counts[prefix] -= 1
        if not counts[prefix]:
            del counts[prefix]
        if applied:
            self.subscriptions -= 1
        return applied

    def _reject(self, fd: int | None, what: str) -> None:
        self.rejected += 1
        closed = fd is not None and _shutdown(fd, self._is_listener)
        self._activity.note("messages rejected", f"rejected {what}" + ("; closed its connection" if closed else ""))
        return None


_FLAGS = (b"\x00", b"\x01")     # the first byte of an unsubscription and of a subscription


def _zap_source(address: str) -> str:
    """The source of a ZAP request: `uid N` for ipc, else the address. libzmq 4.3.5 sends the peer's numeric host,
    for ipc with ':uid:gid:pid' after it (src/stream_engine_base.cpp get_peer_address); an IPv6 host has colons
    of its own, so only a host without one, followed by three numbers, is ipc's form."""
    match = _IPC_ADDRESS.fullmatch(address)
    return _uid_source(int(match[1])) if match else address


_IPC_ADDRESS = re.compile(r"[^:]*:(\d+):\d+:\d+")


def _uid_source(uid: int) -> str:
    return f"uid {uid}"


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object on libzmq's `fd` that leaves the fd open. It takes no fd of its own: a dup would
    fail with EMFILE exactly when a burst of connections has to be refused."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


def _source(fd: int) -> str:
    """The source of an accepted connection, named as `_zap_source` names it."""
    try:
        with _borrowed(fd) as sock:
            if sock.family == socket.AF_UNIX:
                _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
                return _uid_source(uid)
            return str(sock.getpeername()[0])
    except OSError:
        return "unknown"                      # closed already: its DISCONNECTED follows


def _shutdown(fd: int, is_listener: Callable[[socket.socket], bool]) -> bool:
    """Shut down the connection on `fd` if it still is one of this listener's; libzmq then closes it."""
    try:
        with _borrowed(fd) as sock:
            if not is_listener(sock):
                return False
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True
