"""The optional Prometheus endpoint (YAML `metrics:`, `edge run --metrics HOST:PORT`).

A collector reads the daemon's live status snapshot at each scrape, so there is no second set of counters to keep
in step with the lanes; the latency histograms are the one exception, counted by the publisher as each lane's
results are sent (the lane's `sender`). Every client is treated as hostile and the lanes come first:
MAX_REQUESTS_PER_S, MAX_CONNECTIONS, MAX_REQUEST_BYTES and IO_TIMEOUT_S bound what clients take, and `stop()`
closes the port and every connection and joins every thread within its timeout. The metrics, the limits and
what they cost: docs/operations.md, "Metrics".
"""
from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from edge.errors import EdgeError
from edge.log import get_logger
from edge.supervisor.policy import Level

if TYPE_CHECKING:
    from edge.wire.publisher import Sender

log = get_logger("metrics")
MAX_REQUESTS_PER_S = 10.0      # and as many at once: a scraper asks every 15 s or so
MAX_CONNECTIONS = 8            # a scraper or two, and someone with curl
DROP_LOG_S = 60.0              # at most one warning about connections closed unserved per this many seconds
MAX_REQUEST_BYTES = 8192       # request line and headers; a scrape sends a few hundred bytes
IO_TIMEOUT_S = 5.0             # for each read and write of a connection
POLL_S = 0.1                   # how soon the accepting thread sees a stop
LANE = ("task", "camera")
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Labels(Protocol):
    """A lane's labels."""

    @property
    def task(self) -> str: ...

    @property
    def camera(self) -> str: ...


class Lane(Protocol):
    """What the collector reads of a lane besides the status snapshot: its labels (`stats`) and what the publisher
    counted of its results (`sender`), e.g. a CameraLane (edge/pipeline/lanes.py)."""

    @property
    def stats(self) -> Labels: ...

    @property
    def sender(self) -> Sender: ...


class Source(Protocol):
    """What the collector reads: the service."""

    @property
    def lanes(self) -> Sequence[Lane]: ...

    def status(self) -> dict[str, Any]: ...


class MetricsServer:
    """The HTTP endpoint: `start()` binds and serves on a thread, `stop()` releases the port, connections and
    threads."""

    def __init__(self, address: tuple[str, int], source: Source) -> None:
        self.address = address
        self.registry = CollectorRegistry()
        self.registry.register(EdgeCollector(source, self))
        ProcessCollector(registry=self.registry)           # CPU, memory, open files of the daemon
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one chosen for port 0); 0 before start."""
        return self._http.server_address[1] if self._http is not None else 0

    @property
    def url(self) -> str:
        host = self.address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port or self.address[1]}/metrics"

    @property
    def dropped(self) -> int:
        """Connections closed unserved: over MAX_REQUESTS_PER_S, or over MAX_CONNECTIONS (evicted or refused)."""
        return self._http.dropped if self._http is not None else 0

    def start(self) -> None:
        host, port = self.address
        try:
            self._http = _HTTPServer((host, port), _app(self.registry))
        except OSError as exc:
            raise _bind_error(host, port, exc) from None
        self._thread = threading.Thread(target=self._http.serve_forever, args=(POLL_S,), name="metrics-http",
                                        daemon=True)
        self._thread.start()
        if ipaddress.ip_address(host).is_loopback:
            log.info("Prometheus metrics on %s", self.url)
        else:
            log.warning("Prometheus metrics on %s, reachable from other machines: no authentication, no encryption"
                        " (lanes, cameras, temperatures); use 127.0.0.1 where the scraper runs on this machine",
                        self.url)

    def stop(self, timeout: float) -> None:
        """Stop accepting, free the port, close every connection and join every thread, within `timeout`."""
        http, thread, self._http, self._thread = self._http, self._thread, None, None
        if http is None or thread is None:
            return
        deadline = time.monotonic() + timeout
        http.shutdown()                      # the accepting loop ends within POLL_S
        http.server_close()                  # the port is free again
        left = http.close_connections(deadline)
        thread.join(max(0.0, deadline - time.monotonic()))
        if left or thread.is_alive():
            log.warning("metrics: %d connection thread(s) did not end within %.1f s", left + thread.is_alive(), timeout)


def _bind_error(host: str, port: int, exc: OSError) -> EdgeError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hints = {errno.EADDRINUSE: f"another program listens on port {port} (`ss -ltnp 'sport = :{port}'` names it;"
                               " another edge daemon?): stop it, or set metrics.listen (or --metrics) to a free port",
             errno.EACCES: "ports below 1024 need privileges the daemon does not have: use one from 1024 up (the"
                           " default is 9108)",
             errno.EADDRNOTAVAIL: f"no interface of this machine has the address {host}: use 127.0.0.1 (this"
                                  " machine only) or an address that `ip -brief address` lists"}
    return EdgeError(f"cannot start the metrics endpoint on {where}: {exc.strerror or exc}",
                     note=f"metrics.listen is {where}; bind failed with {errno.errorcode.get(exc.errno or 0, exc)}",
                     hint=hints.get(exc.errno or 0, "set metrics.listen (or --metrics) to another address, or remove"
                                                    " the metrics section to run without the endpoint"))


def _app(registry: CollectorRegistry) -> WsgiApp:
    """prometheus_client's app, answering 500 with a log line (not a bare traceback on stderr) when collecting fails."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return metrics(environ, start_response)
        except Exception:  # a collector bug: this scrape fails, the endpoint and the daemon go on
            log.exception("metrics: collecting failed")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"collecting the metrics failed; the daemon's log says why\n"]
    return app


# ------------------------------------------------------------------------------------------------- HTTP server

class _Connection:
    def __init__(self, sock: socket.socket, address: Any, serve: Callable[[_Connection], None]) -> None:
        self.socket = sock
        self.address = address
        self.reading = True            # until its request has been read
        self.closed = False
        self.thread = threading.Thread(target=serve, args=(self,), name="metrics-connection", daemon=True)

    def close(self) -> None:
        """Wake the thread serving it: its read or write fails at once, and it closes the socket."""
        self.closed = True
        with contextlib.suppress(OSError):           # the client has closed it already
            self.socket.shutdown(socket.SHUT_RDWR)


class _HTTPServer(WSGIServer):
    """wsgiref's server with a thread per connection, bounded as the module says, binding without a DNS lookup."""

    allow_reuse_address = True         # a restart binds at once, past the old connections in TIME_WAIT
    allow_reuse_port = False           # never share the port with another process
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], app: WsgiApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dropped = 0
        self._connections: dict[socket.socket, _Connection] = {}      # in order of arrival
        self._lock = threading.Lock()
        self._tokens, self._filled = MAX_REQUESTS_PER_S, time.monotonic()
        self._logged = (0, time.monotonic() - DROP_LOG_S)              # (dropped, when) at the last warning
        super().__init__(address, _Handler)
        self.set_app(app)

    def server_bind(self) -> None:
        """TCPServer's bind, without HTTPServer's socket.getfqdn(): a reverse DNS lookup that can hang offline."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        connection = _Connection(request, client_address, self._serve)
        admitted = self._within_rate() and self._admit(connection)
        self._log_dropped()
        if not admitted:
            self.shutdown_request(request)
            return
        try:
            connection.thread.start()
        except RuntimeError as exc:        # no thread now (the machine's or the unit's limit): refuse this one
            log.warning("metrics: cannot serve a connection: %s", exc)
            self._forget(connection)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What socketserver would print to stderr, logged."""
        log.exception("metrics: accepting a connection from %s failed", client_address)

    def _within_rate(self) -> bool:
        """A token bucket of MAX_REQUESTS_PER_S a second, as many at once (only the accepting thread calls this)."""
        now = time.monotonic()
        self._tokens = min(MAX_REQUESTS_PER_S, self._tokens + (now - self._filled) * MAX_REQUESTS_PER_S)
        self._filled = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def _admit(self, connection: _Connection) -> bool:
        """Room for one more, made when full by evicting the oldest connection still sending its request; False
        when every connection is being answered (or evicted ones have not ended yet)."""
        with self._lock:
            live = [c for c in self._connections.values() if not c.closed]
            if len(live) >= MAX_CONNECTIONS:
                waiting = [c for c in live if c.reading]
                self.dropped += 1
                if not waiting or len(self._connections) >= 2 * MAX_CONNECTIONS:
                    return False
                waiting[0].close()
            self._connections[connection.socket] = connection
            return True

    def _log_dropped(self) -> None:
        count, when = self._logged
        now = time.monotonic()
        if self.dropped > count and now - when >= DROP_LOG_S:
            log.warning("metrics: closed %d connection(s) unserved %s: more than %g a second, or %d at once (a"
                        " scraper needs one every 15 s or so)", self.dropped - count,
                        "since the start" if count == 0 else f"in the last {now - when:.0f} s", MAX_REQUESTS_PER_S,
                        MAX_CONNECTIONS)
            self._logged = (self.dropped, now)

    def request_read(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections[sock].reading = False

    def _serve(self, connection: _Connection) -> None:
        try:
            self.finish_request(connection.socket, connection.address)
        except (OSError, http.client.HTTPException) as exc:    # reset, timed out, evicted, or a request too large
            log.debug("metrics: client %s: %r", connection.address, exc)
        finally:
            self._forget(connection)
            self.shutdown_request(connection.socket)

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            del self._connections[connection.socket]

    def close_connections(self, deadline: float) -> int:
        """Close every connection and join its thread until `deadline`; the number of threads still running."""
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.close()
        for connection in connections:
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for c in connections if c.thread.is_alive())


class _Handler(WSGIRequestHandler):
    timeout = IO_TIMEOUT_S             # StreamRequestHandler puts it on the socket
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile = _Bounded(self.rfile, MAX_REQUEST_BYTES)      # type: ignore[assignment]

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.request_read(self.request)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """No log line per request."""


class _Bounded:
    """The request stream of a connection, ending in LineTooLong (a 431 reply) after `limit` bytes. The app reads no
    request body (GET only), so readline is all it needs."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise http.client.LineTooLong(f"a request of more than {MAX_REQUEST_BYTES} bytes")
        line = self._raw.readline(self._left if size < 0 else min(size, self._left))
        self._left -= len(line)
        return line

    def close(self) -> None:
        self._raw.close()


# ---------------------------------------------------------------------------------------------------- collector

class EdgeCollector:
    """The daemon's metrics, read from `source` at each scrape."""

    def __init__(self, source: Source, server: MetricsServer) -> None:
        self.source = source
        self.server = server

    def collect(self) -> Iterator[Metric]:
        snapshot = self.source.status()
        yield from _lane_metrics(snapshot["lanes"])
        yield _latency(self.source.lanes)
        yield from _task_metrics(snapshot["tasks"])
        yield from _supervisor_metrics(snapshot["supervisor"], snapshot["telemetry"])
        yield from _camera_metrics(snapshot["cameras"])
        yield GaugeMetricFamily("edge_subscriber_connections", "connections to the results socket",
                                value=snapshot["peers"]["connections"])
        yield CounterMetricFamily("edge_metrics_connections_dropped", "connections to this endpoint closed unserved,"
                                  f" over {MAX_CONNECTIONS} at once", value=self.server.dropped)


_LANE_COUNTERS = (                     # metric, status key, help
    ("edge_lane_frames_captured", "captured", "frames the lane took from its camera"),
    ("edge_lane_frames_processed", "processed", "frames the engine ran"),
    ("edge_lane_frames_published", "published", "results sent to the subscribers"),
    ("edge_lane_frames_skipped", "skipped_rate", "frames left out on purpose: the task's rate limit, the supervisor's"
     " rate scale or pause"))


def _lane_metrics(lanes: list[dict[str, Any]]) -> list[Metric]:
    fps = GaugeMetricFamily("edge_lane_fps", "results published per second over the last 2 s", labels=LANE)
    running = GaugeMetricFamily("edge_lane_running", "1 while the lane runs; 0 once it has ended (a file's end, an"
                                " error)", labels=LANE)
    counters = [(CounterMetricFamily(name, doc, labels=LANE), key) for name, key, doc in _LANE_COUNTERS]
    dropped = CounterMetricFamily("edge_lane_frames_dropped", "frames lost; reason camera: a newer frame came before"
                                  " the lane took it; publisher: the publisher's queue was full",
                                  labels=[*LANE, "reason"])
    for lane in lanes:
        labels = [lane["task"], lane["camera"]]
        fps.add_metric(labels, lane["fps"])
        running.add_metric(labels, float(lane["running"]))
        for family, key in counters:
            family.add_metric(labels, lane[key])
        dropped.add_metric([*labels, "camera"], lane["dropped_camera"])
        dropped.add_metric([*labels, "publisher"], lane["dropped_publisher"])
    return [fps, running, *(family for family, _ in counters), dropped]


def _latency(lanes: Sequence[Lane]) -> HistogramMetricFamily:
    family = HistogramMetricFamily("edge_lane_latency_seconds", "capture to publish, per result", labels=LANE)
    for lane in lanes:
        buckets = lane.sender.latency.snapshot()
        bounds = [f"{bound:g}" for bound in buckets.bounds_s] + ["+Inf"]
        family.add_metric([lane.stats.task, lane.stats.camera], list(zip(bounds, buckets.counts)), buckets.sum_ns / 1e9)
    return family


def _task_metrics(tasks: list[dict[str, Any]]) -> list[Metric]:
    precision = GaugeMetricFamily("edge_task_precision", "1 for the variant the task runs now, 0 for its other loaded"
                                  " variants", labels=["task", "precision"])
    rate = GaugeMetricFamily("edge_task_rate_scale", "share of frames the supervisor lets the task run (1 all, 0.5"
                             " every other, 0 paused)", labels=["task"])
    for task in tasks:
        for variant in dict.fromkeys([*task["loaded"], task["precision"]]):
            precision.add_metric([task["task"], variant], float(variant == task["precision"]))
        rate.add_metric([task["task"]], task["rate_scale"])
    return [precision, rate]


def _supervisor_metrics(supervisor: dict[str, Any] | None, telemetry: dict[str, Any] | None) -> Iterator[Metric]:
    """The supervisor's level and its last telemetry sample; nothing while the supervisor is off or has no sample."""
    if supervisor is not None:
        yield GaugeMetricFamily("edge_supervisor_level", "0 NORMAL, 1 HOT (int8), 2 CRITICAL (lower rates, pauses)",
                                value=Level[supervisor["level"]].value)
    if telemetry is None:
        return
    temps = GaugeMetricFamily("edge_temperature_celsius", "temperature per thermal zone", labels=["zone"])
    for zone, celsius in telemetry["temps_c"].items():
        temps.add_metric([zone], celsius)
    power = GaugeMetricFamily("edge_power_watts", "power per rail", labels=["rail"])
    for rail, milliwatts in telemetry["power_mw"].items():
        power.add_metric([rail], milliwatts / 1000)
    yield from (temps, power)
    if telemetry["total_mw"] is not None:
        yield GaugeMetricFamily("edge_power_total_watts", "the module's input power (VDD_IN), else the rails' sum",
                                value=telemetry["total_mw"] / 1000)
    if telemetry["gpu_load"] is not None:
        yield GaugeMetricFamily("edge_gpu_load_ratio", "GPU load, 0 to 1", value=telemetry["gpu_load"])


def _camera_metrics(cameras: list[dict[str, Any]]) -> list[Metric]:
    connected = GaugeMetricFamily("edge_camera_connected", "1 while the camera delivers frames", labels=["camera"])
    frames = CounterMetricFamily("edge_camera_frames", "frames decoded from the camera", labels=["camera"])
    reconnects = CounterMetricFamily("edge_camera_reconnects", "times the camera was opened again after a loss",
                                     labels=["camera"])
    outages = CounterMetricFamily("edge_camera_outages", "times the camera was lost: a failed open, a read that"
                                  " failed or stalled", labels=["camera"])
    for camera in cameras:
        connected.add_metric([camera["id"]], float(camera["connected"]))
        frames.add_metric([camera["id"]], camera["captured"])
        reconnects.add_metric([camera["id"]], camera["reconnects"])
        outages.add_metric([camera["id"]], camera["outages"])
    return [connected, frames, reconnects, outages]
