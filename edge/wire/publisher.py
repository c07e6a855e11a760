"""The results publisher: the one thread that owns the PUB socket (an XPUB in manual mode), fed by a bounded queue.

Sending never blocks a lane: a full queue drops the message and counts it, and a subscriber that does not keep
up loses messages at its own SNDHWM, never the others'. `seq` is given at enqueue time, so every drop shows as a
gap. The hand-off runs one way: a lane queues a message it built through its `Sender`, whose counters (sent,
dropped, latencies) this thread writes and the lane reads; the publisher never changes a message and knows no
lanes. Which peers and subscriptions it takes (edge/wire/peers.py): docs/protocol.md, "Endpoint and socket";
why: docs/reliability.md.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import errno
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from edge.errors import EdgeError
from edge.log import get_logger
from edge.wire import ipc, protocol
from edge.wire.peers import MONITOR_EVENTS, ZAP_ENDPOINT, Activity, Curve, Gate, Limits, Subscriptions

log = get_logger("publisher")
CLOSE_FLUSH_MS = 500         # bounded flush of queued messages at a graceful stop
HANDSHAKE_MS = 2000          # a connection that has not finished the ZMTP handshake by then is closed
INBOUND_HWM = 16             # messages queued from one peer (subscriptions are few)
# a ZAP domain makes libzmq refuse ZMTP 1.0/2.0 peers (docs/reliability.md, "Why random bytes silenced the old daemon")
ZAP_DOMAIN = b"edge"
CURVE_MAXMSGSIZE = 1024      # room for CURVE's INITIATE command; subscriptions stay bounded by the gate's rules
# The longest subscription as MAXMSGSIZE counts it, the frame's body (libzmq 4.3.5 src/v2_decoder.cpp size_ready):
# a ZMTP 3.0 peer sends a flag byte (1 or 0) and the topic prefix; a ZMTP 3.1 one (libzmq 4.3.3 and later) the
# SUBSCRIBE or CANCEL command, its name after a length byte, then the prefix (ZeroMQ RFC 37; src/msg.hpp).
MAX_SUBSCRIPTION_BYTES = max(map(len, (b"\x01", b"\x00", b"\x09SUBSCRIBE", b"\x06CANCEL"))) + protocol.MAX_TOPIC_BYTES
BATCH = 512                  # inbound messages handled between two rounds of sending
RESULTS_SETTING = "output.results / EDGE_RESULTS_ENDPOINT"
RESULTS_SOCKET_MODE = 0o660          # the daemon's user and group subscribe on ipc
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
_BUCKET_BOUNDS_NS = tuple(round(bound * 1e9) for bound in LATENCY_BUCKETS_S)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """A histogram as a scrape reads it: the cumulative count at each bound and then of all, and the sum."""

    bounds_s: tuple[float, ...]
    counts: list[int]
    sum_ns: int


class LatencyHistogram:
    """Capture-to-publish latencies counted into LATENCY_BUCKETS_S since its sender was made, for the metrics
    endpoint's histogram (`Sender.latencies_ns` keeps only the last ones): the publisher thread observes, a scrape
    takes a snapshot."""

    def __init__(self) -> None:
        self._counts = [0] * (len(_BUCKET_BOUNDS_NS) + 1)     # per bucket; the last one is above the largest bound
        self._sum_ns = 0
        self._lock = threading.Lock()

    def observe_ns(self, latency_ns: int) -> None:
        bucket = bisect.bisect_left(_BUCKET_BOUNDS_NS, latency_ns)    # a latency equal to a bound is in its bucket
        with self._lock:
            self._counts[bucket] += 1
            self._sum_ns += latency_ns

    def snapshot(self) -> Buckets:
        """The counts so far with their bounds, consistent."""
        with self._lock:
            counts, sum_ns = list(self._counts), self._sum_ns
        return Buckets(LATENCY_BUCKETS_S, list(itertools.accumulate(counts)), sum_ns)


class Sender:
    """One producer's messages on one topic (a lane's det topic) and what became of them, made by
    `Publisher.sender`. The counters are written by the publisher alone (at the queue and in its thread) and read
    by anyone; reading them changes nothing. Messages with a capture time (`t_capture_ns`: det) count their
    capture-to-publish latency."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        self.topic = topic
        self.published = 0                  # sent on the socket
        self.dropped = 0                    # dropped at the full queue
        self.latencies_ns: collections.deque[int] = collections.deque(maxlen=2048)   # of the last ones sent
        self.sent_ns: collections.deque[int] = collections.deque(maxlen=4096)        # when the last ones were sent
        self.latency = LatencyHistogram()   # every one since the sender was made
        self._publisher = publisher

    def publish(self, message: Mapping[str, Any]) -> bool:
        """Queue `message` on this sender's topic (see `Publisher.publish`); False when it was dropped."""
        return self._publisher.publish(self.topic, message, self)

    def latency_ms(self, quantile: float) -> float | None:
        """The quantile of the last latencies in ms; None before any."""
        values = sorted(self.latencies_ns.copy())  # copy() is atomic; the publisher appends concurrently
        if not values:
            return None
        return values[min(len(values) - 1, int(quantile * len(values)))] / 1e6

    def rate(self, now_ns: int, window_s: float) -> float:
        """Messages sent per second over the `window_s` before `now_ns`."""
        since = now_ns - int(window_s * 1e9)
        return sum(1 for t in self.sent_ns.copy() if t > since) / window_s

    def _sent(self, t_capture_ns: int | None, t_publish_ns: int) -> None:
        self.published += 1
        if t_capture_ns is not None:
            latency_ns = t_publish_ns - t_capture_ns
            self.latencies_ns.append(latency_ns)
            self.latency.observe_ns(latency_ns)
        self.sent_ns.append(t_publish_ns)


@dataclasses.dataclass(frozen=True)
class _Item:
    topic: str
    message: Mapping[str, Any]
    seq: int
    sender: Sender | None


def pack_sent(message: Mapping[str, Any], *, seq: int, t_publish_ns: int, t_wall_ns: int) -> bytes:
    """The bytes of a message as the publisher sends it: its fields, then the three the publisher adds (a field the
    message has already keeps its place; docs/protocol.md, "Byte-level example"). `message` is not changed."""
    return protocol.pack({**message, "seq": seq, "t_publish_ns": t_publish_ns, "t_wall_ns": t_wall_ns})


class Publisher:
    def __init__(self, endpoint: str, *, sndhwm: int = 100, queue_size: int = 64, limits: Limits | None = None,
                 context: zmq.Context[Any] | None = None, curve: Curve | None = None) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self._sndhwm = sndhwm
        self._limits = limits or Limits()
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None
        self._gate: Gate | None = None
        self._wake: ipc.Waker | None = None     # publish() wakes the thread's poll
        self._thread: threading.Thread | None = None
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._activity = Activity()
        self._subscriptions: Subscriptions | None = None
        self.dropped_other = 0

    def start(self) -> None:
        """Bind the socket (errors surface here) and start the sending thread."""
        limits = self._limits.within_open_files()
        self._socket, monitor = self._bind()
        is_listener = _listener_check(self._socket)
        try:
            self._gate = Gate(self._context, monitor, limits, is_listener, self._activity,
                              clients=self._curve.clients if self._curve is not None else None)
        except zmq.ZMQError as exc:
            monitor.close(linger=0)
            self._socket.close(linger=0)
            self._socket = None
            raise EdgeError(f"cannot serve connection checks for {self.endpoint}: {exc.strerror}",
                            note=f"{ZAP_ENDPOINT} is bound already in this process",
                            hint="run one publisher per ZeroMQ context") from exc
        self._subscriptions = Subscriptions(limits, self._gate, is_listener, self._activity)
        self._gate.start()
        self._wake = ipc.Waker()
        self._thread = threading.Thread(target=self._run, args=(self._socket, self._wake, self._subscriptions),
                                        name="publisher", daemon=True)
        self._thread.start()
        log.info("publishing results on %s", self.endpoint)

    def _bind(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        path = protocol.ipc_path(self.endpoint)
        if path is not None:
            ipc.prepare(path, what="results endpoint", setting=RESULTS_SETTING)
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self._sndhwm)
        sock.setsockopt(zmq.RCVHWM, INBOUND_HWM)
        # a larger message ends its connection; CURVE's handshake commands (INITIATE: 257 bytes and the peer's
        # metadata) pass through the same limit
        sock.setsockopt(zmq.MAXMSGSIZE, CURVE_MAXMSGSIZE if self._curve else MAX_SUBSCRIPTION_BYTES)
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)       # no handshake completes without the gate's answer
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        sock.setsockopt(zmq.IPV6, 1)                     # tcp://[::1]:PORT binds (libzmq's default is IPv4 only)
        if self._curve is not None:                  # encrypted; only the clients' keys the gate knows get in
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret)
        monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            hint = ("another edge daemon (or another program) uses it; stop it or set output.results /"
                    " EDGE_RESULTS_ENDPOINT to a free endpoint") if exc.errno == errno.EADDRINUSE else \
                "check the endpoint syntax and that its directory exists and is writable"
            raise EdgeError(f"cannot bind results endpoint {self.endpoint}: {exc.strerror}", hint=hint) from exc
        if path is not None:
            # connecting to a unix socket needs write permission on its file (unix(7)); the unit's UMask=0027
            # leaves 0750, so only the daemon's own user could subscribe. Vehicle software in the daemon's group
            # (SupplementaryGroups=edge) may; the directory (0750, this user's) keeps everyone else out.
            os.chmod(path, RESULTS_SOCKET_MODE)
        return sock, monitor

    @property
    def subscriptions(self) -> int:
        return self._subscriptions.subscriptions if self._subscriptions is not None else 0

    @property
    def connections(self) -> int:
        return self._gate.connected if self._gate is not None else 0

    @property
    def rejected_inbound(self) -> int:
        return self._subscriptions.rejected if self._subscriptions is not None else 0

    @property
    def refused_connections(self) -> int:
        return self._gate.refused if self._gate is not None else 0

    def next_seq(self, topic: str) -> int:
        with self._seq_lock:
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            return seq

    def sender(self, topic: str) -> Sender:
        """A producer's own way to publish on `topic`, with its own counters (from zero)."""
        return Sender(self, topic)

    def publish(self, topic: str, message: Mapping[str, Any], sender: Sender | None = None) -> bool:
        """Queue a message built by edge.wire.protocol, which stays as it is (its seq is taken here, at the
        queue); False when it was dropped. `sender` counts what became of it; drops of messages without one
        count in `dropped_other`."""
        try:
            self._queue.put_nowait(_Item(topic, message, self.next_seq(topic), sender))
        except queue.Full:
            if sender is not None:
                sender.dropped += 1
            else:
                self.dropped_other += 1
            return False
        self._notify()
        return True

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:            # else not started: the queue waits
            wake.notify()

    def event(self, name: str, details: dict[str, Any]) -> None:
        log.info("event %s %s", name, details)
        self.publish("sys.event", protocol.event_message(name, **details))

    def wait_for_subscriber(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float) -> None:
        """Send what is queued (bounded by `timeout`), then close the socket with a short flush."""
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
                self._notify()
            except queue.Full:
                log.warning("queue still full at stop; dropping %d queued messages", self._queue.qsize())
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("publisher thread did not stop within %.1f s", timeout)
                return
        if self._socket is not None:
            self._socket.disable_monitor()
            if self._gate is not None:
                self._gate.stop(timeout)
            self._socket.close(linger=CLOSE_FLUSH_MS)
            self._socket = None
            path = protocol.ipc_path(self.endpoint)
            if path is not None:
                ipc.wait_released(path, timeout)
                ipc.remove_own_socket(path)
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        self._thread = None

    def _run(self, sock: zmq.Socket[Any], wake: ipc.Waker, subscriptions: Subscriptions) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        while True:
            poller.poll(1000)
            self._read_inbound(sock, subscriptions)
            wake.drain()
            final = not self._send_queued(sock)
            self._activity.summary(f"{self.connections} connection(s), {self.subscriptions} subscription(s)",
                                   final=final)
            if final:
                return

    def _send_queued(self, sock: zmq.Socket[Any]) -> bool:
        """Send what the lanes queued; False at the stop marker."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            self._send(sock, item)

    def _send(self, sock: zmq.Socket[Any], item: _Item) -> None:
        now = time.monotonic_ns()
        packed = pack_sent(item.message, seq=item.seq, t_publish_ns=now, t_wall_ns=time.time_ns())
        sock.send_multipart([item.topic.encode(), packed])   # an XPUB drops, never blocks
        if item.sender is not None:
            item.sender._sent(item.message.get("t_capture_ns"), now)

    def _read_inbound(self, sock: zmq.Socket[Any], subscriptions: Subscriptions) -> None:
        """Apply the subscriptions that are prefixes of edge's topics, within the limits; count and ignore
        every other message, closing the connection that sent it."""
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                subscriptions.emptied()
                return
            first = frames[0]
            conn, fd = _frame_get(first, "User-Id"), _frame_get(first, zmq.SRCFD)
            action = subscriptions.inbound(None if conn is None else int(str(conn)), None if fd is None else int(fd),
                                           [frame.bytes for frame in frames])
            if action is not None:
                subscribe, prefix = action
                sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, prefix)  # for that peer only
                if subscribe:
                    self._subscribed.set()


def _frame_get(frame: zmq.Frame, key: str | int) -> object | None:
    """A message property (User-Id: the connection number from the gate; ZMQ_SRCFD: the connection's fd); None
    where libzmq has none: inproc peers, and the unsubscriptions libzmq makes itself when a connection closes."""
    try:
        return frame.get(key)
    except zmq.ZMQError:
        return None


def _listener_check(sock: zmq.Socket[Any]) -> Callable[[socket.socket], bool]:
    """A test that a connection's socket belongs to the endpoint `sock` is bound to."""
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    path = protocol.ipc_path(endpoint)
    if path is not None:
        return lambda conn: conn.family == socket.AF_UNIX and conn.getsockname() == str(path)
    port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://") else -1
    return lambda conn: conn.family in (socket.AF_INET, socket.AF_INET6) and conn.getsockname()[1] == port
