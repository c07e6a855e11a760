"""Config reload (SIGHUP, the control socket's `reload`, `edge reload`): the plan (edge/daemon/reload.py) from two
real configs, then the real daemon on the demo model with test:// cameras: changed tasks restart, unchanged
lanes run on untouched (the same lane object, its counters going on), supervisor thresholds follow; a refused
config (invalid YAML, an unknown key, a changed endpoint, a task whose model is missing) changes nothing and is
logged and published; under a real NOTIFY_SOCKET a SIGHUP gives RELOADING=1 then READY=1."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.loader import parse_config
from edge.daemon import reload
from edge.errors import ConfigError, EdgeError, EngineError, SourceError
from edge.pipeline.cameras import Camera
from edge.pipeline.lanes import Lane
from edge.pipeline.runtime import TaskRuntime
from tests.conftest import wait_for
from tests.support.daemon import Running, run, start
from tests.support.systemd import Systemd


def _yaml(tmp_path: Path, model: Any, *, tasks: str, supervisor: str = "", results: str = "r.sock",
          cameras: str = "") -> str:
    return f"""version: 1
cameras:
  - id: cam0
    uri: test://bars?fps=8&size=320x240
  - id: cam1
    uri: test://bars?fps=8&size=320x240{cameras}
tasks:
{tasks}
output:
  results: ipc://{tmp_path}/{results}
control:
  endpoint: ipc://{tmp_path}/c.sock
supervisor:
  telemetry: none{supervisor}
"""


def _task(name: str, camera: str, model: Any, extra: str = "") -> str:
    return f"""  - name: {name}
    type: detector
    model: {model}
    cameras: [{camera}]
    threads: 1{extra}
"""


def _config(text: str, tmp_path: Path) -> Any:
    return parse_config(text, source="t", base_dir=tmp_path, environ={})


# --- the plan -------------------------------------------------------------------------------------------------

def test_the_plan_restarts_only_what_changed(demo: Any, tmp_path: Path) -> None:
    model = demo.model
    old = _config(_yaml(tmp_path, model, tasks=_task("a", "cam0", model) + _task("b", "cam1", model)
                        + _task("c", "cam1", model)), tmp_path)
    new = _config(_yaml(tmp_path, model, tasks=_task("a", "cam0", model)
                        + _task("b", "cam1", model, "\n    enabled: false")
                        + _task("c", "cam1", model, "\n    priority: 80") + _task("d", "cam0", model),
                        supervisor="\n  hot_c: 70\n  cool_c: 60"), tmp_path)
    change = reload.plan(old, new, {"a", "b", "c"})
    assert (change.stop, change.start, change.keep) == (("b", "c"), ("c", "d"), ("a",))
    assert change.supervisor and not change.logging
    assert change.describe() == "restart: c; stop: b; start: d; keep: a; supervisor settings"
    assert reload.plan(old, old, {"a", "b", "c"}).describe() == "nothing changed"
    assert reload.plan(old, old, {"a"}).start == ("b", "c")          # disabled at run time: the file wins


def test_a_changed_camera_restarts_the_tasks_that_read_it(demo: Any, tmp_path: Path) -> None:
    model = demo.model
    tasks = _task("a", "cam0", model) + _task("b", "cam1", model)
    old = _config(_yaml(tmp_path, model, tasks=tasks), tmp_path)
    new = _config(_yaml(tmp_path, model, tasks=tasks, cameras="&frames=100"), tmp_path)
    change = reload.plan(old, new, {"a", "b"})
    assert (change.stop, change.start, change.keep) == (("b",), ("b",), ("a",))
    assert change.reopen == frozenset({"cam1"})                      # opened anew for b, not shared with a


@pytest.mark.parametrize("edit,reopen,plan", [
    ("c on cam2", {"cam2"}, "restart: b; start: c; keep: a"),
    ("b's in_flight 3", {"cam2"}, "restart: b; keep: a"),
    ("c on cam2, read by the CPU", set(), "start: c; keep: a, b")])
def test_a_camera_whose_tasks_hold_more_frames_is_opened_anew(demo: Any, tmp_path: Path, edit: str,
                                                              reopen: set[str], plan: str) -> None:
    """A hardware reader's surface pool is sized once, for the frames in flight of the camera's tasks + 2, and a
    reload kept the open camera when a task was added on it or an in_flight raised: its pool was then too small.
    Such a camera is opened anew, and the tasks on it restart; a camera the CPU reads has no pool to size."""
    model = demo.model
    decode = "\n    decode: cpu" if "CPU" in edit else ""
    cam2 = f"\n  - id: cam2\n    uri: file://{demo.video}{decode}"
    old = _config(_yaml(tmp_path, model, tasks=_task("a", "cam0", model) + _task("b", "cam2", model), cameras=cam2),
                  tmp_path)
    b = _task("b", "cam2", model, "\n    in_flight: 3" if "in_flight" in edit else "")
    c = _task("c", "cam2", model) if "c on" in edit else ""
    change = reload.plan(old, _config(_yaml(tmp_path, model, tasks=_task("a", "cam0", model) + b + c, cameras=cam2),
                                      tmp_path), {"a", "b"})
    assert change.reopen == frozenset(reopen) and change.describe() == plan


def test_a_changed_log_level_is_applied_alone(demo: Any, tmp_path: Path) -> None:
    model = demo.model
    tasks = _task("a", "cam0", model) + _task("b", "cam1", model)
    old = _config(_yaml(tmp_path, model, tasks=tasks), tmp_path)
    new = _config(_yaml(tmp_path, model, tasks=tasks) + "logging:\n  level: debug\n", tmp_path)
    change = reload.plan(old, new, {"a", "b"})
    assert change.logging and not change.supervisor and change.changes and change.reopen == frozenset()
    assert change.describe() == "keep: a, b; log level"


@pytest.mark.parametrize("section,edit", [("output", {"results": "other.sock"}),
                                          ("control", {})])
def test_a_changed_socket_section_refuses_the_whole_reload(demo: Any, tmp_path: Path, section: str,
                                                          edit: dict[str, str]) -> None:
    model = demo.model
    old_text = _yaml(tmp_path, model, tasks=_task("a", "cam0", model))
    new_text = _yaml(tmp_path, model, tasks=_task("a", "cam0", model, "\n    priority: 80"), **edit)
    if section == "control":
        new_text = new_text.replace("/c.sock", "/c2.sock")
    with pytest.raises(EdgeError) as info:
        reload.plan(_config(old_text, tmp_path), _config(new_text, tmp_path), {"a"})
    assert info.value.render() == (
        f"reload refused: the {section} section(s) changed, and they are bound to sockets at start\n"
        "Note: the daemon runs on with its current config\n"
        "Hint: restart to apply them (systemctl restart edge-runtime); reload applies tasks, cameras, supervisor"
        " and logging")


def test_every_changed_socket_section_is_named(demo: Any, tmp_path: Path) -> None:
    model = demo.model
    old_text = _yaml(tmp_path, model, tasks=_task("a", "cam0", model))
    new_text = _yaml(tmp_path, model, tasks=_task("a", "cam0", model), results="other.sock")
    new_text = new_text.replace("/c.sock", "/c2.sock")
    with pytest.raises(EdgeError, match=r"^reload refused: the output, control section\(s\) changed"):
        reload.plan(_config(old_text, tmp_path), _config(new_text, tmp_path), {"a"})


# --- the daemon -----------------------------------------------------------------------------------------------

@pytest.fixture
def running(demo: Any, tmp_path: Path) -> Iterator[Running]:
    path = tmp_path / "edge.yaml"
    path.write_text(_yaml(tmp_path, demo.model, tasks=_task("a", "cam0", demo.model) + _task("b", "cam1", demo.model)))
    daemon = Running(path)
    yield daemon
    daemon.close()


def _processing(daemon: Running, task: str, more_than: int = 0) -> Any:
    return wait_for(lambda: daemon.service._lanes.get(task) and daemon.lane(task).stats.processed > more_than,
                    60, f"task {task} to process frames")


def test_a_reload_applies_the_changes_and_leaves_unchanged_lanes_running(demo: Any, tmp_path: Path,
                                                                        running: Running) -> None:
    _processing(running, "a")
    _processing(running, "b")
    lane_a = running.lane("a")
    model = demo.model
    running.path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model)
                                  + _task("b", "cam1", model, "\n    enabled: false")
                                  + _task("c", "cam1", model, "\n    params:\n      conf_threshold: 0.5"),
                                  supervisor="\n  hot_c: 70\n  cool_c: 60"))
    result = running.service.handle("reload", {})
    assert result == {"changes": "stop: b; start: c; keep: a; supervisor settings"}
    assert running.lane("a") is lane_a and not lane_a.finished.is_set()          # untouched, still running
    before = lane_a.stats.processed
    _processing(running, "a", before)                                             # its counters go on
    _processing(running, "c")
    assert set(running.service.tasks) == {"a", "c"} and "b" not in running.service._lanes
    assert running.service.supervisor.policy.config.hot_c == 70
    assert running.service.tasks["c"].config.params.conf_threshold == 0.5
    event = running.event("config.reload")
    assert event["result"] == "applied" and "start: c" in event["changes"]
    running.path.write_text(running.path.read_text().replace("threads: 1\n  - name: b", "threads: 1\n    priority: 90"
                                                             "\n  - name: b", 1))
    assert running.service.reload() == {"changes": "restart: a; keep: c"}
    assert running.lane("a") is not lane_a and lane_a.finished.is_set()
    _processing(running, "a")


def test_a_reload_reopens_a_camera_for_more_frames_in_flight_and_sizes_its_pool(demo: Any, tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    model = demo.model
    cam2 = f"\n  - id: cam2\n    uri: file://{demo.video}?loop=1"
    path.write_text(_yaml(tmp_path, model, tasks=_task("b", "cam2", model, "\n    in_flight: 1"), cameras=cam2))
    daemon = Running(path)
    try:
        camera = daemon.service.cameras.open["cam2"]
        assert camera._open_reader.surfaces == 1 + 2
        path.write_text(_yaml(tmp_path, model, tasks=_task("b", "cam2", model, "\n    in_flight: 1")
                              + _task("c", "cam2", model), cameras=cam2))
        assert daemon.service.reload() == {"changes": "restart: b; start: c"}
        reopened = daemon.service.cameras.open["cam2"]
        assert reopened is not camera and reopened._open_reader.surfaces == 1 + 2 + 2
        _processing(daemon, "b")
        _processing(daemon, "c")
    finally:
        daemon.close()


def _broken_task(tmp_path: Path, model: Any, task_c: str, camera: str = "") -> str:
    """Task b changed (so a half-applied reload would restart it) and task c that cannot start."""
    return _yaml(tmp_path, model, tasks=_task("a", "cam0", model) + _task("b", "cam1", model, "\n    priority: 90")
                 + task_c, cameras=camera)


@pytest.mark.parametrize("breakage,error,message", [
    ("invalid YAML", ConfigError, "is not valid YAML"),
    ("an unknown key", ConfigError, "allowed keys here"),
    ("a changed results endpoint", EdgeError, "reload refused: the output section"),
    ("a task whose model is missing", EngineError, "task c: no variant of missing.onnx can run here"),
    ("a task on a camera file that is missing", SourceError, "camera 'cam2': camera file does not exist"),
    ("a camera path over NAME_MAX", SourceError, "cannot be used: File name too long"),
    ("a batch the model cannot run", EngineError, "task c: batch: true over 2 cameras"),
    ("an error nobody foresaw", EdgeError, "config reload failed: OSError: [Errno 28] No space left on device"),
])
def test_a_refused_config_changes_nothing_and_says_why(demo: Any, tmp_path: Path, running: Running, breakage: str,
                                                        error: type[Exception], message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload is a transaction: engines load and new cameras open before anything that runs is touched, and
    the switch happens only when every step succeeded. A refused reload leaves the lanes (the same objects),
    the tasks, the open cameras and the config in use as they were, and closes whatever it had prepared."""
    _processing(running, "a")
    lanes = {task: running.lane(task) for task in ("a", "b")}
    config, cameras = running.service.config, dict(running.service.cameras.open)
    model = demo.model
    good = running.path.read_text()
    cam2 = "\n  - id: cam2\n    uri: file://{}?realtime=0"
    broken = {
        "invalid YAML": good + "tasks: [\n",
        "an unknown key": good.replace("    threads: 1\n", "    threads: 1\n    thread: 2\n", 1),
        "a changed results endpoint": good.replace("/r.sock", "/other.sock"),
        "a task whose model is missing": _broken_task(tmp_path, model, _task("c", "cam1", tmp_path / "missing.onnx")),
        "a task on a camera file that is missing": _broken_task(tmp_path, model, _task("c", "cam2", model),
                                                                cam2.format(tmp_path / "missing.avi")),
        "a camera path over NAME_MAX": _broken_task(tmp_path, model, _task("c", "cam2", model),
                                                    cam2.format(tmp_path / ("v" * 300 + ".avi"))),
        "a batch the model cannot run": _broken_task(tmp_path, model, _task("c", "cam0, cam1", model,
                                                                            "\n    batch: true")),
        "an error nobody foresaw": _broken_task(tmp_path, model, _task("c", "cam2", model),
                                                cam2.format(demo.video)),
    }[breakage]
    if breakage == "an error nobody foresaw":
        def full_disk(*args: Any) -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(Camera, "open", full_disk)
    loaded: list[TaskRuntime] = []
    real_load = TaskRuntime.load
    monkeypatch.setattr(TaskRuntime, "load", lambda self: (loaded.append(self), real_load(self))[1])
    running.path.write_text(broken)
    with pytest.raises(error) as info:
        running.service.handle("reload", {})
    assert message in str(info.value)
    assert {task: running.lane(task) for task in ("a", "b")} == lanes and set(running.service.tasks) == {"a", "b"}
    assert running.service.config is config and running.service.cameras.open == cameras
    assert running.lane("b").runtime.config.priority == 50                       # not restarted with priority 90
    assert not any(lane.finished.is_set() for lane in lanes.values())
    assert all(not engine.is_active for runtime in loaded for engine in runtime.variants.engines.values())
    event = running.event("config.reload")
    assert event["result"] == "refused" and event["reason"]
    before = lanes["b"].stats.processed
    _processing(running, "b", before)                                             # serving on as before
    running.path.write_text(good)
    assert running.service.reload() == {"changes": "nothing changed"}


def test_sighup_reloads_with_reloading_and_ready_and_edge_reload_reports_a_refusal(
        demo: Any, tmp_path: Path, systemd: Systemd) -> None:
    path = tmp_path / "edge.yaml"
    model = demo.model
    path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model)))
    proc = start(path, env_extra={"NOTIFY_SOCKET": str(systemd.path)})
    try:
        assert systemd.until("READY", 60)["READY"] == "1"
        path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model) + _task("b", "cam1", model)))
        proc.send_signal(signal.SIGHUP)
        reloading = systemd.until("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        ready = systemd.until("READY", 60)
        assert "a.cam0" in ready["STATUS"] and "b.cam1" in ready["STATUS"]
        control = f"ipc://{tmp_path}/c.sock"
        path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model), results="moved.sock"))
        refused = run("reload", "--control", control)
        assert refused.returncode != 0 and "reload refused: the output section" in refused.stderr
        path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model)))
        applied = run("reload", "--control", control)
        assert applied.returncode == 0 and "config reloaded: stop: b; keep: a" in applied.stdout, applied.stderr
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert "config reload refused, running on with the config in use" in stderr


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    manager = Systemd(tmp_path / "notify.sock")
    yield manager
    manager.close()


def test_turning_the_supervisor_off_and_on_replaces_it_and_the_tasks_run_on(demo: Any, tmp_path: Path,
                                                                             running: Running) -> None:
    _processing(running, "a")
    lanes = {task: running.lane(task) for task in ("a", "b")}
    first = running.service.supervisor
    good = running.path.read_text()
    running.path.write_text(good.replace("  telemetry: none", "  enabled: false\n  telemetry: none"))
    assert running.service.reload() == {"changes": "keep: a, b; supervisor settings"}
    assert running.service.supervisor is None and running.service.status()["supervisor"] is None
    running.path.write_text(good)
    assert running.service.reload() == {"changes": "keep: a, b; supervisor settings"}
    second = running.service.supervisor
    assert second is not None and second is not first and set(second._runtimes) == {"a", "b"}
    wait_for(lambda: second.sample is not None, 10, "the new supervisor's first telemetry sample")   # it runs
    assert {task: running.lane(task) for task in ("a", "b")} == lanes


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (SigCgt in /proc/PID/status, proc(5))."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)


def test_a_sighup_while_the_daemon_starts_is_held_until_it_is_ready(demo: Any, tmp_path: Path,
                                                                   systemd: Systemd) -> None:
    """SIGHUP's default action ends a process: a SIGHUP in the first moments after exec (rc 129) killed the
    daemon, whose handler came after the imports, the config and the service. The handler now comes before
    SIGTERM's, the first edge installs; the reload it asks for waits until READY=1, then runs."""
    path = tmp_path / "edge.yaml"
    path.write_text(_yaml(tmp_path, demo.model, tasks=_task("a", "cam0", demo.model)))
    proc = start(path, env_extra={"NOTIFY_SOCKET": str(systemd.path)})
    try:
        wait_for(lambda: proc.poll() is not None or _catches(proc.pid, signal.SIGTERM), 30,
                 "edge to install its first signal handler")
        proc.send_signal(signal.SIGHUP)
        assert systemd.until("READY", 60)["READY"] == "1"
        assert systemd.until("RELOADING")["RELOADING"] == "1"
        assert systemd.until("READY", 60)["READY"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert "config reloaded: nothing changed" in stderr


def test_a_sighup_reload_that_raises_is_refused_and_the_daemon_runs_on(demo: Any, tmp_path: Path,
                                                                       running: Running) -> None:
    """A camera path over NAME_MAX raised OSError out of the reload, which SIGHUP ran in the run loop: the daemon
    ended. Any error in a reload is a refusal, logged and published, and the daemon runs on."""
    _processing(running, "a")
    model = demo.model
    running.path.write_text(_broken_task(tmp_path, model, _task("c", "cam2", model),
                                         f"\n  - id: cam2\n    uri: file://{tmp_path / ('v' * 300)}.avi"))
    running.service.reload_requested.set()
    event = running.event("config.reload", 30)
    assert event["result"] == "refused" and "File name too long" in event["reason"]
    assert running.thread.is_alive() and set(running.service.tasks) == {"a", "b"}
    before = running.lane("a").stats.processed
    _processing(running, "a", before)


def test_the_status_snapshot_is_never_half_switched(demo: Any, tmp_path: Path, running: Running,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """While a reload switched, `edge status` showed a started task with no lane (its runtime was registered
    before its lanes) and a camera no lane read any more: a health check polling then could misjudge. Caught
    here in the middle of a switch, while the lane of the restarted task b is being stopped."""
    _processing(running, "b")
    stopping, resume = threading.Event(), threading.Event()
    real_stop = Lane.stop

    def held_stop(lane: Lane, timeout: float) -> bool:
        if lane.name == "b.cam1":
            stopping.set()
            resume.wait(60)
        return real_stop(lane, timeout)
    monkeypatch.setattr(Lane, "stop", held_stop)
    model = demo.model
    running.path.write_text(_yaml(tmp_path, model, tasks=_task("a", "cam0", model)
                                  + _task("c", "cam2", model) + _task("b", "cam1", model, "\n    priority: 90"),
                                  cameras="\n  - id: cam2\n    uri: test://bars?fps=8&size=320x240"))
    reloader = threading.Thread(target=running.service.reload)
    reloader.start()
    try:
        assert stopping.wait(60), "the switch to stop b's lane"
        status = running.service.status()
        with_lanes = {lane["task"] for lane in status["lanes"]}
        assert {task["task"] for task in status["tasks"]} == with_lanes == {"a"}
        assert [camera["id"] for camera in status["cameras"]] == ["cam0"]
    finally:
        resume.set()
        reloader.join(60)
    status = running.service.status()
    assert {task["task"] for task in status["tasks"]} == {"a", "b", "c"}
    assert [camera["id"] for camera in status["cameras"]] == ["cam0", "cam1", "cam2"]
