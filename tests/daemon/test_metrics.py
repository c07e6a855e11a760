"""The Prometheus endpoint with real parts: the daemon on the demo model, scraped over real HTTP on 127.0.0.1 and
parsed with prometheus_client's own parser; its config; a port in use; hostile clients; a clean stop."""
from __future__ import annotations

import contextlib
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.cli import main as cli
from edge.cli import run as cli_run
from edge.config.loader import parse_config
from edge.daemon import metrics
from edge.daemon.service import Service
from edge.errors import ConfigError, EdgeError
from edge.wire.publisher import LATENCY_BUCKETS_S
from tests.conftest import PEER_S, free_port, wait_for
from tests.support.daemon import start as start_daemon

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HOT_TRACE = ('{"t": 0, "temps_c": {"tj": 91.5, "gpu": 88.25}, "power_mw": {"VDD_IN": 7400, "VDD_CPU_GPU_CV": 2150},'
             ' "gpu_load": 0.375}\n')


def config_text(demo, tmp_path: Path, *, cameras: int = 1, query: str = "realtime=1&loop=1",
                metrics_section: str = "metrics:\n  listen: 127.0.0.1:0\n", trace: Path | None = None) -> str:
    cams = "".join(f"  - id: c{i}\n    uri: file://{demo.video}?{query}\n" for i in range(cameras))
    supervisor = f"supervisor:\n  telemetry: trace://{trace}\n  confirm_s: 0\n" if trace else ""
    return (f"version: 1\ncameras:\n{cams}tasks:\n  - name: objects\n    type: detector\n    engines: {demo.engines}\n"
            f"    cameras: [{', '.join(f'c{i}' for i in range(cameras))}]\n"
            f"output:\n  results: ipc://{tmp_path}/r.sock\ncontrol:\n  endpoint: ipc://{tmp_path}/c.sock\n"
            f"{supervisor}{metrics_section}")


def config(demo, tmp_path: Path, environ: dict[str, str] | None = None, **kwargs: Any):
    return parse_config(config_text(demo, tmp_path, **kwargs), source="test", base_dir=tmp_path,
                        environ=environ or {})


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """Every sample of a scrape, by (sample name, labels), as prometheus_client's parser reads it."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_when_served(url: str, timeout: float = 5.0) -> Samples:
    """A scrape, asked again while the endpoint closes connections unserved (over its rate)."""
    samples: list[Samples] = []

    def served() -> bool:
        with contextlib.suppress(OSError):                       # closed unserved: reset, or no status line
            samples.append(scrape(url))
        return bool(samples)
    wait_for(served, timeout, f"a scrape of {url} to be served")
    return samples[0]


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def of(samples: Samples, name: str, label: str) -> dict[str, float]:
    """label value -> sample value for every sample `name` (one label besides fixed ones)."""
    return {dict(key)[label]: value for (sample, key), value in samples.items() if sample == name}


def assert_port_free(port: int) -> None:
    """Another server can listen on `port` (with SO_REUSEADDR, as the daemon binds: the closed connections' TIME_WAIT
    does not count, a listening socket does)."""
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("metrics-")]


@pytest.fixture
def running(demo, tmp_path: Path) -> Iterator[Service]:
    """The daemon on the demo video at its 10 fps (looped), its run loop on a thread, metrics on a free port."""
    yield from run_service(demo, tmp_path)


@pytest.fixture
def running_unlimited(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """`running` without the rate limit (it has its own test), for tests of the other limits."""
    monkeypatch.setattr(metrics, "MAX_REQUESTS_PER_S", 1e6)
    yield from run_service(demo, tmp_path)


def run_service(demo, tmp_path: Path) -> Iterator[Service]:
    service = Service(config(demo, tmp_path))
    service.start()
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    yield service
    stop.set()
    runner.join(10)
    service.stop()


# ---------------------------------------------------------------------------------------------------- values

def test_a_scrape_reports_what_status_reports(demo, tmp_path: Path) -> None:
    """Two lanes that have finished (so status cannot move), a hot telemetry trace: every value equals status(),
    and the latency histogram counts exactly the latencies the lanes measured."""
    trace = tmp_path / "hot.jsonl"
    trace.write_text(HOT_TRACE)
    service = Service(config(demo, tmp_path, cameras=2, query="realtime=0", trace=trace), max_frames=12)
    service.start()
    try:
        assert service.run(threading.Event()) == 0
        wait_for(lambda: all(lane["published"] == 12 for lane in service.status()["lanes"]), 10, "every result sent")
        wait_for(lambda: service.status()["tasks"][0]["precision"] == "int8", 10, "the supervisor's switch to int8")
        before = service.status()
        samples = scrape(service.metrics.url)
        after = service.status()
        latencies = {lane.name: list(lane.sender.latencies_ns) for lane in service.lanes}
        port = service.metrics.port
    finally:
        service.stop()
    assert not metrics_threads()
    assert_port_free(port)
    assert [lane["published"] for lane in after["lanes"]] == [12, 12]
    for lane, was in zip(after["lanes"], before["lanes"]):
        labels = {"task": "objects", "camera": lane["camera"]}
        for sample, key in (("captured", "captured"), ("processed", "processed"), ("published", "published"),
                            ("skipped", "skipped_rate")):
            assert get(samples, f"edge_lane_frames_{sample}_total", **labels) == lane[key] == was[key]
        assert get(samples, "edge_lane_frames_dropped_total", reason="camera", **labels) == lane["dropped_camera"]
        assert get(samples, "edge_lane_frames_dropped_total", reason="publisher", **labels) == 0
        assert lane["fps"] <= get(samples, "edge_lane_fps", **labels) <= was["fps"]    # results age out of its window
        assert get(samples, "edge_lane_running", **labels) == 0                       # max_frames reached
        measured = latencies[f"objects.{lane['camera']}"]
        assert len(measured) == 12
        for bound in LATENCY_BUCKETS_S:
            assert get(samples, "edge_lane_latency_seconds_bucket", le=f"{bound:g}", **labels) == \
                sum(1 for ns in measured if ns <= bound * 1e9)
        assert get(samples, "edge_lane_latency_seconds_bucket", le="+Inf", **labels) == 12
        assert get(samples, "edge_lane_latency_seconds_count", **labels) == 12
        assert get(samples, "edge_lane_latency_seconds_sum", **labels) == pytest.approx(sum(measured) / 1e9)
    assert of(samples, "edge_task_precision", "precision") == {"fp32": 0, "int8": 1}
    assert after["tasks"][0]["loaded"] == ["fp32", "int8"] and after["tasks"][0]["precision"] == "int8"
    assert get(samples, "edge_task_rate_scale", task="objects") == 1.0
    assert after["supervisor"]["level"] == "HOT" and get(samples, "edge_supervisor_level") == 1
    temps = of(samples, "edge_temperature_celsius", "zone")
    assert temps == after["telemetry"]["temps_c"] == {"tj": 91.5, "gpu": 88.25}
    assert of(samples, "edge_power_watts", "rail") == {"VDD_IN": 7.4, "VDD_CPU_GPU_CV": 2.15}
    assert after["telemetry"]["power_mw"] == {"VDD_IN": 7400, "VDD_CPU_GPU_CV": 2150}
    assert get(samples, "edge_power_total_watts") == after["telemetry"]["total_mw"] / 1000 == 7.4
    assert get(samples, "edge_gpu_load_ratio") == 0.375
    for camera in after["cameras"]:
        assert get(samples, "edge_camera_connected", camera=camera["id"]) == camera["connected"]
        assert get(samples, "edge_camera_reconnects_total", camera=camera["id"]) == camera["reconnects"] == 0
        assert get(samples, "edge_camera_outages_total", camera=camera["id"]) == camera["outages"] == 0
        assert get(samples, "edge_camera_frames_total", camera=camera["id"]) >= 12
    assert get(samples, "edge_subscriber_connections") == after["peers"]["connections"] == 0
    assert get(samples, "process_open_fds") > 0                     # the daemon's process, from /proc


def test_values_of_a_running_daemon_lie_between_two_status_snapshots(running: Service) -> None:
    wait_for(lambda: running.status()["lanes"][0]["published"] >= 5, 30, "results to flow")
    before = running.status()["lanes"][0]
    samples = scrape(running.metrics.url)
    after = running.status()["lanes"][0]
    labels = {"task": "objects", "camera": "c0"}
    for key in ("captured", "processed", "published"):
        assert before[key] <= get(samples, f"edge_lane_frames_{key}_total", **labels) <= after[key]
    count = get(samples, "edge_lane_latency_seconds_count", **labels)
    assert before["published"] <= count <= after["published"]
    buckets = [get(samples, "edge_lane_latency_seconds_bucket", le=f"{b:g}", **labels) for b in LATENCY_BUCKETS_S]
    assert buckets == sorted(buckets) and buckets[-1] <= count
    assert 0.001 < get(samples, "edge_lane_latency_seconds_sum", **labels) / count < 1.0
    assert 0 < get(samples, "edge_lane_fps", **labels) and get(samples, "edge_lane_running", **labels) == 1
    assert of(samples, "edge_task_precision", "precision") == {"fp32": 1, "int8": 0}   # NORMAL: no telemetry here
    assert get(samples, "edge_supervisor_level") == 0
    assert ("edge_temperature_celsius", frozenset()) not in samples


def test_a_failing_collector_answers_500_and_the_next_scrape_works(running: Service, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    status = running.status
    calls = []

    def failing_once() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return status()
    monkeypatch.setattr(running, "status", failing_once)
    with caplog.at_level("ERROR", logger="edge.metrics"), pytest.raises(urllib.error.HTTPError) as failed:
        scrape(running.metrics.url)
    assert failed.value.code == 500 and b"the daemon's log says why" in failed.value.read()
    assert "metrics: collecting failed" in caplog.text and "injected fault" in caplog.text
    assert get(scrape(running.metrics.url), "edge_lane_running", task="objects", camera="c0") == 1


# ---------------------------------------------------------------------------------------------------- config

def test_metrics_are_off_without_the_section_and_on_with_it(demo, tmp_path: Path) -> None:
    off = config(demo, tmp_path, metrics_section="")
    assert not off.metrics.enabled and Service(off).metrics is None
    on = config(demo, tmp_path, metrics_section="metrics: {}\n")
    assert on.metrics.enabled and on.metrics.address == ("127.0.0.1", 9108)
    assert not config(demo, tmp_path, metrics_section="metrics:\n  enabled: false\n").metrics.enabled


@pytest.mark.parametrize("listen, address", [("127.0.0.1:0", ("127.0.0.1", 0)), ("localhost:9100", ("127.0.0.1", 9100)),
                                             ("0.0.0.0:9108", ("0.0.0.0", 9108)), ("[::1]:65535", ("::1", 65535))])
def test_listen_addresses(demo, tmp_path: Path, listen: str, address: tuple[str, int]) -> None:
    assert config(demo, tmp_path, metrics_section=f"metrics:\n  listen: '{listen}'\n").metrics.address == address


@pytest.mark.parametrize("listen", ["9108", "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80",
                                    "127.0.0.1: 80", "example.com:9108", "::1:9108", "[127.0.0.1]:9108", "127.1:9108",
                                    ":9108", "127.0.0.1:９１０８"])
def test_bad_listen_addresses_are_refused_with_the_rule(demo, tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config(demo, tmp_path, metrics_section=f"metrics:\n  listen: '{listen}'\n")
    message = str(refused.value)
    assert "metrics.listen: must be HOST:PORT" in message and f"(value: {listen!r})" in message
    assert "e.g. 127.0.0.1:9108 (this machine only)" in message


def test_an_unknown_metrics_key_lists_the_allowed_ones(demo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.port: Extra inputs are not permitted.*allowed keys here: enabled,"
                                          r" listen"):
        config(demo, tmp_path, metrics_section="metrics:\n  port: 9108\n")


def test_the_environment_and_the_command_line_turn_metrics_on(demo, tmp_path: Path) -> None:
    environ = {"EDGE_METRICS_LISTEN": "127.0.0.1:9200"}
    assert config(demo, tmp_path, environ, metrics_section="").metrics.address == ("127.0.0.1", 9200)
    assert config(demo, tmp_path, environ, metrics_section="").metrics.enabled
    assert not config(demo, tmp_path, environ, metrics_section="metrics:\n  enabled: false\n").metrics.enabled
    args = cli.build_parser().parse_args(["run", "--config", "x.yaml", "--metrics", "127.0.0.1:9200"])
    assert cli_run._env_overrides(args) == environ
    with pytest.raises(ConfigError, match=r"metrics\.listen \(from \$EDGE_METRICS_LISTEN\): must be HOST:PORT"):
        config(demo, tmp_path, {"EDGE_METRICS_LISTEN": "9200"}, metrics_section="")


# ---------------------------------------------------------------------------------------------------- start, stop

def test_a_port_in_use_fails_the_start_with_what_and_how(demo, tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cfg = config(demo, tmp_path, metrics_section=f"metrics:\n  listen: 127.0.0.1:{port}\n")
        service = Service(cfg)
        with pytest.raises(EdgeError) as failed:
            service.start()
    error = failed.value
    assert error.what == f"cannot start the metrics endpoint on 127.0.0.1:{port}: Address already in use"
    assert error.note == f"metrics.listen is 127.0.0.1:{port}; bind failed with EADDRINUSE"
    assert f"ss -ltnp 'sport = :{port}'" in error.hint and "set metrics.listen (or --metrics)" in error.hint
    assert not service.tasks and not metrics_threads()          # it failed before loading an engine
    again = Service(cfg, max_frames=1)                          # the results and control sockets were released
    again.start()
    try:
        assert get(scrape(again.metrics.url), "edge_subscriber_connections") == 0
    finally:
        again.stop()


def test_stop_closes_the_port_every_connection_and_thread(running: Service) -> None:
    port = running.metrics.port
    idle = socket.create_connection(("127.0.0.1", port))
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
    assert get(scrape(running.metrics.url), "edge_lane_running", task="objects", camera="c0") == 1
    wait_for(lambda: len(metrics_threads()) == 3, 5, "the accepting thread and the two held connections' threads")
    running.metrics.stop(5)
    assert not metrics_threads()
    for client in (idle, half):
        client.settimeout(5)
        assert client.recv(100) == b""                           # closed by the daemon, not left hanging
        client.close()
    assert_port_free(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_the_cli_flag_serves_while_the_daemon_runs(demo, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(demo, tmp_path, metrics_section=""))
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_daemon(path, "--metrics", f"127.0.0.1:{port}")
    try:
        def published() -> float:
            with contextlib.suppress(OSError, KeyError):     # not up yet, no lane yet
                return get(scrape(url, timeout=2), "edge_lane_frames_published_total", task="objects", camera="c0")
            return 0
        wait_for(published, 60, "the daemon's metrics to show a published result")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"metrics    | Prometheus metrics on {url}" in stderr
    assert_port_free(port)


def test_an_address_beyond_this_machine_is_a_warning(demo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = Service(config(demo, tmp_path, metrics_section="metrics:\n  listen: 0.0.0.0:0\n"), max_frames=1)
    with caplog.at_level("WARNING", logger="edge.metrics"):
        service.start()
    port = service.metrics.port
    try:
        assert get(scrape(f"http://127.0.0.1:{port}/metrics"), "edge_subscriber_connections") == 0
    finally:
        service.stop()
    assert f"Prometheus metrics on http://0.0.0.0:{port}/metrics, reachable from other machines: no authentication," \
           " no encryption" in caplog.text


# ---------------------------------------------------------------------------------------------------- hostile clients

def reply_to(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(data)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        return received


def test_junk_and_oversized_requests_get_an_error_and_nothing_else(running: Service) -> None:
    port = running.metrics.port
    junk = reply_to(port, b"\x16\x03\x01\x02\x00\x01\x00\xff\xfe junk\r\n\r\n")    # a TLS hello, say
    assert b"Error code: 400" in junk and b"# HELP" not in junk           # an HTTP/0.9 error page: no status line
    assert reply_to(port, b"GET /metrics HTTP/1.0\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.0 431 ")
    assert reply_to(port, b"POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.0 405 ")
    assert reply_to(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 OK")
    assert get(scrape(running.metrics.url), "edge_lane_running", task="objects", camera="c0") == 1


def hold(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never finish a request: every other one sends half a request."""
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for client in held[::2]:
        client.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
    return held


def test_clients_holding_connections_do_not_keep_a_scraper_out(running_unlimited: Service,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """More idle and half-sent connections than the endpoint serves at once (and no IO timeout to free them): a
    scraper still gets its answer at once, the threads stay bounded, and the daemon runs on."""
    running = running_unlimited
    monkeypatch.setattr(metrics._Handler, "timeout", 60.0)
    held = hold(running.metrics.port, metrics.MAX_CONNECTIONS + 4)
    wait_for(lambda: running.metrics.dropped == 4, PEER_S, "the endpoint to take every held connection")
    published = running.status()["lanes"][0]["published"]
    for _ in range(3):
        assert get(scrape(running.metrics.url, timeout=3), "edge_lane_running", task="objects", camera="c0") == 1
        assert len(metrics_threads()) <= 2 * metrics.MAX_CONNECTIONS + 1     # the hard bound
    wait_for(lambda: running.status()["lanes"][0]["published"] > published, 10, "the lane to go on publishing")
    for client in held:
        client.close()


def test_a_scrape_being_answered_is_not_evicted(running_unlimited: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections arriving while a scrape is collected evict only connections still sending their request."""
    running = running_unlimited
    status, entered, release = running.status, threading.Event(), threading.Event()

    def slow_status() -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return status()
    monkeypatch.setattr(running, "status", slow_status)
    results: list[Samples] = []
    scraper = threading.Thread(target=lambda: results.append(scrape(running.metrics.url)))
    scraper.start()
    wait_for(entered.is_set, 10, "the scrape to be collected")
    held = hold(running.metrics.port, metrics.MAX_CONNECTIONS + 4)
    wait_for(lambda: running.metrics.dropped == 5, PEER_S, "the endpoint to take every held connection")
    release.set()
    scraper.join(10)
    assert results and get(results[0], "edge_lane_running", task="objects", camera="c0") == 1
    for client in held:
        client.close()


def test_a_burst_of_connections_leaves_the_endpoint_and_the_daemon_working(running: Service) -> None:
    for _ in range(100):
        socket.create_connection(("127.0.0.1", running.metrics.port), timeout=10).close()
    published = running.status()["lanes"][0]["published"]
    assert get(scrape_when_served(running.metrics.url), "edge_lane_running", task="objects", camera="c0") == 1
    assert running.metrics.dropped > 0                          # over the rate: closed at once, no thread
    wait_for(lambda: len(metrics_threads()) == 1, 10, "the burst's threads to end")
    wait_for(lambda: running.status()["lanes"][0]["published"] > published, 10, "the lane to go on publishing")


def test_more_connections_a_second_than_the_rate_are_closed_unserved_and_logged(
        running: Service, caplog: pytest.LogCaptureFixture) -> None:
    served = 0
    with caplog.at_level("WARNING", logger="edge.metrics"):
        for _ in range(50):
            with contextlib.suppress(OSError):                   # closed unserved
                scrape(running.metrics.url)
                served += 1
    assert metrics.MAX_REQUESTS_PER_S <= served <= 40 and running.metrics.dropped == 50 - served
    assert caplog.text.count("metrics: closed") == 1                        # once a minute at most
    assert "metrics: closed 1 connection(s) unserved since the start: more than 10 a second, or 8 at once" \
        in caplog.text
    samples = scrape_when_served(running.metrics.url)
    assert get(samples, "edge_metrics_connections_dropped_total") == running.metrics.dropped >= 50 - served


def test_a_connection_that_gets_no_thread_is_refused_and_forgotten(running: Service,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the machine (or the unit's TasksMax) has no thread left for one connection."""
    start, failed = threading.Thread.start, []

    def start_or_fail(thread: threading.Thread) -> None:
        if thread.name == "metrics-connection" and not failed:
            failed.append(thread)
            raise RuntimeError("can't start new thread")
        start(thread)
    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    with pytest.raises(OSError):                                 # closed unserved
        scrape(running.metrics.url)
    assert failed and get(scrape(running.metrics.url), "edge_lane_running", task="objects", camera="c0") == 1
    wait_for(lambda: len(metrics_threads()) == 1, 5, "the served connection's thread to end")
    assert not running.metrics._http._connections                # the refused one was not kept


def test_an_idle_connection_is_closed_after_the_io_timeout(running: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics._Handler.timeout == metrics.IO_TIMEOUT_S == 5.0
    monkeypatch.setattr(metrics._Handler, "timeout", 0.2)
    with socket.create_connection(("127.0.0.1", running.metrics.port)) as idle:
        idle.settimeout(10)
        assert idle.recv(100) == b""                             # the server gave up on it, not the client
    wait_for(lambda: len(metrics_threads()) == 1, 5, "its thread to end")
