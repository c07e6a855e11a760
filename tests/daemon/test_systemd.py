"""The daemon and systemd's timers, under a real NOTIFY_SOCKET (the datagram socket the test binds, as systemd
does): the start is extended only after real progress, a reload runs beside the heartbeats and watchdog pings,
SIGTERM during a reload stops in bounded time, and a stalled run loop sends no burst of heartbeats.

systemd's rules these encode (src/core/service.c, v246 to v249 alike; JetPack 6 runs 249):
- EXTEND_TIMEOUT_USEC=N moves the state timer to at least now + N (service_extend_timeout), so an extension
  sent while nothing progresses keeps a hung start alive; without one, TimeoutStartSec ends it.
- service_extend_timeout extends the watchdog deadline the same way: edge sends none after READY=1.
- The watchdog stays armed in the RELOAD state (service_set_state stops it only outside START_POST, RUNNING
  and RELOAD): WATCHDOG=1 must go on while a reload loads engines, or systemd sends SIGABRT.
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.config.loader import load_config
from edge.daemon import systemd as notify
from edge.daemon.service import STOP_TIMEOUT_S, Service
from edge.pipeline.runtime import TaskRuntime
from tests.support.daemon import RawSubscriber, Running
from tests.support.systemd import Systemd


def _config(tmp_path: Path, model: Any, tasks: tuple[str, ...] = ("a",), heartbeat_hz: float = 1.0) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text("version: 1\ncameras:\n  - id: cam0\n    uri: test://bars?fps=10&size=320x240\ntasks:\n"
                    + "".join(f"  - name: {name}\n    type: detector\n    model: {model}\n    cameras: [cam0]\n"
                              "    threads: 1\n" for name in tasks)
                    + f"output:\n  results: ipc://{tmp_path}/r.sock\n  heartbeat_hz: {heartbeat_hz}\n"
                      f"control:\n  endpoint: ipc://{tmp_path}/c.sock\nsupervisor:\n  telemetry: none\n")
    return path


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    manager = Systemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")                  # pings every 0.5 s
    yield manager
    manager.close()


class Gate:
    """TaskRuntime.load held for one task until the test opens the gate: an engine that takes long to load."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, task: str) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.runtimes: list[TaskRuntime] = []
        real = TaskRuntime.load

        def load(runtime: TaskRuntime) -> None:
            if runtime.name == task:
                self.runtimes.append(runtime)
                self.entered.set()
                self.opened.wait(120)
            real(runtime)
        monkeypatch.setattr(TaskRuntime, "load", load)


def _received(systemd: Systemd) -> list[dict[str, str]]:
    """Every message already queued on the socket, without waiting for more."""
    systemd.sock.setblocking(False)
    try:
        while True:
            try:
                systemd.messages.append(dict(line.split("=", 1) for line in systemd.sock.recv(4096).decode()
                                             .split("\n")))
            except BlockingIOError:
                return systemd.messages
    finally:
        systemd.sock.setblocking(True)


def test_a_start_is_extended_only_after_progress_so_a_hung_start_times_out(
        demo: Any, tmp_path: Path, systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXTEND_TIMEOUT_USEC every 10 s whatever happened kept a hung start (a jtop connect, a camera open,
    cuInit) alive for ever. Now it comes after each engine loaded and each camera opened: while the first
    engine load hangs nothing extends the start, so TimeoutStartSec (120 s in the unit) ends it."""
    gate = Gate(monkeypatch, "a")
    service = Service(load_config(_config(tmp_path, demo.model), environ={}))
    starter = threading.Thread(target=service.start)
    starter.start()
    try:
        assert gate.entered.wait(60), "the engine load to begin"
        assert not [m for m in _received(systemd) if "EXTEND_TIMEOUT_USEC" in m]
        gate.opened.set()
        starter.join(60)
        assert not starter.is_alive()
        extends = [m for m in systemd.messages + [systemd.until("READY")] if "EXTEND_TIMEOUT_USEC" in m]
        assert [m["STATUS"] for m in extends] == ["starting: task a loaded (1 of 1)", "starting: camera cam0 open"]
        assert all(m["EXTEND_TIMEOUT_USEC"] == str(int(notify.EXTEND_BY_S * 1e6)) for m in extends)
    finally:
        gate.opened.set()
        starter.join(60)
        service.stop()


def test_progress_past_the_start_cap_or_after_ready_extends_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n.sock"))
        sock.settimeout(10)
        notifier = notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        notifier.progress("starting: task a loaded (1 of 2)")
        assert sock.recv(200) == b"EXTEND_TIMEOUT_USEC=60000000\nSTATUS=starting: task a loaded (1 of 2)"
        monkeypatch.setattr(notify, "START_CAP_S", 120.0)
        monkeypatch.setattr(notifier, "_born", notifier._born - 121.0)   # the start has run 2 min and 1 s
        notifier.progress("starting: task b loaded (2 of 2)")
        notifier.progress("starting: camera cam0 open")
        assert sock.recv(200) == b"STATUS=starting: task b loaded (2 of 2)"
        assert sock.recv(200) == b"STATUS=starting: camera cam0 open"
        assert [r.getMessage() for r in caplog.records if "no more start time" in r.getMessage()] == [
            "the start has run for over 2 min: no more start time is asked of systemd, so TimeoutStartSec ends it"
            " if it does not finish"]
        monkeypatch.setattr(notify, "START_CAP_S", 1800.0)
        notifier.ready("running")
        notifier.progress("a build step after READY=1")
        assert sock.recv(200) == b"READY=1\nSTATUS=running"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(200)


@pytest.fixture
def slow_reload(demo: Any, tmp_path: Path, systemd: Systemd,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Running, Gate]]:
    """A daemon running task a; its config file gains task slow, whose engine load the gate holds; SIGHUP asked."""
    gate = Gate(monkeypatch, "slow")
    daemon = Running(_config(tmp_path, demo.model))
    assert systemd.until("READY", 60)["READY"] == "1"
    _config(tmp_path, demo.model, tasks=("a", "slow"))
    daemon.service.reload_requested.set()                        # what the SIGHUP handler does
    assert systemd.until("RELOADING")["RELOADING"] == "1"
    assert gate.entered.wait(60), "the slow engine load to begin"
    yield daemon, gate
    gate.opened.set()
    daemon.close()


def test_the_watchdog_pings_and_heartbeats_go_on_while_a_reload_loads_engines(
        slow_reload: tuple[Running, Gate], systemd: Systemd) -> None:
    """The reload ran in the run loop: while it loaded engines (longer than WatchdogSec=10 s on a board) no
    WATCHDOG=1 went out, and systemd, which keeps the watchdog armed while reloading, sent SIGABRT. The reload
    now runs on its own thread and the lanes that are kept go on, so the pings and heartbeats do too."""
    daemon, gate = slow_reload
    seen = len(systemd.messages)
    pings = [systemd.until("WATCHDOG", 10) for _ in range(3)]
    heartbeats = [m for m in systemd.messages[seen:] if m.get("STATUS", "").startswith("a.cam0 fp32")]
    assert pings and heartbeats and not gate.opened.is_set()
    assert daemon.service.lanes[0].stats.processed > 0
    gate.opened.set()
    assert "slow.cam0" in systemd.until("READY", 60)["STATUS"]
    assert set(daemon.service.tasks) == {"a", "slow"}


def test_sigterm_during_a_reload_stops_in_bounded_time_and_the_reload_is_abandoned(
        slow_reload: tuple[Running, Gate], systemd: Systemd) -> None:
    """SIGTERM during a reload took 9.4 s against the documented 5 s: the run loop was inside the reload. Now
    `run` returns at once; `stop` waits, within its time, for the engine that is loading (a process that exits
    while a thread is inside ONNX Runtime or TensorRT aborts: rc 134 in 5 of 16 tries), and that reload then finds
    the daemon stopping, starts nothing and unloads what it loaded."""
    daemon, gate = slow_reload
    daemon.stop.set()
    daemon.thread.join(STOP_TIMEOUT_S)
    assert not daemon.thread.is_alive()
    stopper = threading.Thread(target=daemon.service.stop)
    stopper.start()
    assert systemd.until("STOPPING")["STOPPING"] == "1"
    reloader = daemon.service._reloader
    stopper.join(STOP_TIMEOUT_S / 2)                  # `stop` must not end while the engine still loads
    assert reloader is not None and reloader.is_alive() and stopper.is_alive()
    gate.opened.set()
    stopper.join(2 * STOP_TIMEOUT_S)
    assert not stopper.is_alive() and not reloader.is_alive()
    assert daemon.service.tasks == {} and daemon.service.lanes == []
    assert all(not engine.is_active for runtime in gate.runtimes for engine in runtime.variants.engines.values())


def test_a_reload_whose_engine_outlasts_the_stop_time_does_not_hold_the_stop(
        slow_reload: tuple[Running, Gate], caplog: pytest.LogCaptureFixture) -> None:
    daemon, gate = slow_reload
    daemon.stop.set()
    daemon.thread.join(STOP_TIMEOUT_S)
    stopper = threading.Thread(target=daemon.service.stop, args=(0.5,))
    stopper.start()
    stopper.join(STOP_TIMEOUT_S)
    assert not stopper.is_alive() and not gate.opened.is_set()
    assert "a config reload is still loading an engine; stopping without waiting for it" in caplog.messages


def test_a_stalled_run_loop_sends_no_burst_of_heartbeats(demo: Any, tmp_path: Path, ctx: zmq.Context) -> None:
    """After a stall the missed heartbeats went out at once, as many as periods were missed; now one goes out
    when the loop can run again and the next at least half a period later."""
    daemon = Running(_config(tmp_path, demo.model, heartbeat_hz=4))
    heartbeats = RawSubscriber(ctx, f"ipc://{tmp_path}/r.sock", b"sys.heartbeat")
    try:
        assert heartbeats.recv(10_000) is not None
        with daemon.service._lock:                               # the snapshot each heartbeat needs waits
            threading.Event().wait(1.5)                          # six heartbeat periods
        uptimes = []
        while len(uptimes) < 4:
            got = heartbeats.recv(10_000)
            assert got is not None
            uptimes.append(got[1]["uptime_s"])
        gaps = [later - earlier for earlier, later in zip(uptimes, uptimes[1:])]
        assert min(gaps) > 0.05, gaps
    finally:
        heartbeats.close()
        daemon.close()


# --- which lanes are stalled (the watchdog's gate) ----------------------------------------------------------------

class _Lane:
    """What `Stalls` reads of a lane: its name, counters and whether it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = type("Stats", (), {"captured": 0, "skipped_rate": 0, "processed": 0})()
        self.finished = threading.Event()

    def counts(self, captured: int, processed: int, skipped_rate: int = 0) -> _Lane:
        self.stats.captured, self.stats.processed, self.stats.skipped_rate = captured, processed, skipped_rate
        return self


def test_a_lane_is_stalled_after_a_whole_interval_with_frames_in_flight_and_none_finished(
        caplog: pytest.LogCaptureFixture) -> None:
    stalls, a, b = notify.Stalls(), _Lane("a.cam0").counts(5, 3), _Lane("b.cam0").counts(5, 3)
    assert stalls.check([a, b], 100.0, 10.0) == []                    # first seen: progress starts now
    assert stalls.check([a, b], 109.9, 10.0) == []
    b.counts(6, 4)                                                    # b finished one more: its interval restarts
    with caplog.at_level("ERROR", logger="edge.systemd"):
        assert stalls.check([a, b], 110.0, 10.0) == ["a.cam0"]       # exactly one interval, still 2 in flight
        assert stalls.check([a, b], 111.0, 10.0) == ["a.cam0"]       # logged once, not on every check
    assert [r.getMessage() for r in caplog.records] == [
        "lane a.cam0 has finished no frame for 10 s with frames in flight; not pinging the systemd watchdog, so"
        " systemd restarts the daemon"]
    assert stalls.check([a, b], 119.9, 10.0) == ["a.cam0"]
    assert stalls.check([a, b], 120.0, 10.0) == ["a.cam0", "b.cam0"]
    a.counts(5, 5)                                                    # a caught up: no longer stalled
    assert stalls.check([a, b], 121.0, 10.0) == ["b.cam0"]


@pytest.mark.parametrize("captured, processed, skipped_rate", [(5, 5, 0), (9, 5, 4), (3, 5, 0)],
                         ids=["all finished", "the rest skipped by the rate limit", "more finished than read"])
def test_a_lane_without_frames_in_flight_is_not_stalled(captured: int, processed: int, skipped_rate: int) -> None:
    stalls, lane = notify.Stalls(), _Lane("a.cam0").counts(captured, processed, skipped_rate)
    stalls.check([lane], 0.0, 10.0)
    assert stalls.check([lane], 1000.0, 10.0) == []


def test_an_ended_lane_is_not_stalled() -> None:
    stalls, lane = notify.Stalls(), _Lane("a.cam0").counts(5, 3)
    stalls.check([lane], 0.0, 10.0)
    lane.finished.set()
    assert stalls.check([lane], 1000.0, 10.0) == []


# --- the notifier, in process (sd_notify(3): one datagram of KEY=VALUE lines) -------------------------------------

@pytest.mark.parametrize("environ, watchdog_s", [
    ({"WATCHDOG_USEC": "4000000"}, 4.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "self"}, 4.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),         # another process's watchdog
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "-5"}, None), ({"WATCHDOG_USEC": "1e6"}, None), ({}, None),
])
def test_the_watchdog_interval_is_read_as_systemd_sets_it(environ: dict[str, str], watchdog_s: float | None) -> None:
    if environ.get("WATCHDOG_PID") == "self":
        environ = {**environ, "WATCHDOG_PID": str(os.getpid())}
    assert notify.Notifier({"NOTIFY_SOCKET": "/x", **environ}).watchdog_s == watchdog_s


def test_each_notification_is_one_datagram_of_its_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = Systemd(tmp_path / "n.sock")
    try:
        notifier = notify.Notifier({"NOTIFY_SOCKET": str(manager.path)})
        assert notifier.enabled
        notifier.status("one\ntwo")
        notifier.watchdog()
        notifier.stopping("stopping")
        clocks: list[int] = []
        monkeypatch.setattr(notify.time, "clock_gettime_ns", lambda clock: clocks.append(clock) or 5_000_123_456)
        notifier.reloading("reloading")
        notifier.ready("running")
        received = [manager.next(5) for _ in range(5)]
        assert received == [{"STATUS": "one two"}, {"WATCHDOG": "1"}, {"STOPPING": "1", "STATUS": "stopping"},
                            {"RELOADING": "1", "MONOTONIC_USEC": "5000123", "STATUS": "reloading"},
                            {"READY": "1", "STATUS": "running"}]
        assert clocks == [notify.time.CLOCK_MONOTONIC]                # sd_notify(3): MONOTONIC_USEC is CLOCK_MONOTONIC
    finally:
        manager.close()


def test_a_manager_that_is_gone_is_warned_of_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level("WARNING", logger="edge.systemd"):
        assert notifier.send(READY=1) is False and notifier.send(WATCHDOG=1) is False
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot notify systemd at {tmp_path / 'gone.sock'}: No such file or directory"]      # the address it was given


@pytest.mark.parametrize("value, address, warned", [("@edge", "\0edge", False), ("/run/n.sock", "/run/n.sock", False),
                                                    ("run/n.sock", None, True), ("", None, False)])
def test_notify_socket_is_a_path_or_an_abstract_name(value: str, address: str | None, warned: bool,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="edge.systemd"):
        assert notify.Notifier({"NOTIFY_SOCKET": value}).address == address
    assert [r.getMessage() for r in caplog.records] == (
        [f"NOTIFY_SOCKET {value!r} is neither a path nor an abstract name (@...); not notifying systemd"]
        if warned else [])
