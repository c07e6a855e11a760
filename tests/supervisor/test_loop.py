"""The supervisor at work (edge/supervisor/loop.py) on real parts: a trace replayed on a test clock, the real
policy, real task runtimes on ONNX Runtime, and, end to end, the daemon on the demo video with a trace
that heats up and cools down: every frame's result arrives once, `seq` has no gap, and the precision in
the results changes exactly where the switch events say."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from edge.config.loader import parse_config
from edge.config.supervisor import SupervisorSection
from edge.daemon.service import Service
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.errors import EdgeError
from edge.supervisor.loop import Supervisor, open_telemetry
from edge.supervisor.telemetry.common import NoneReader, TelemetryError
from edge.supervisor.telemetry.trace import TraceReader
from edge.wire import control
from edge.wire.client import Subscriber
from tests.conftest import PEER_S, wait_for
from tests.support.lanes import runtime


def write_trace(path: Path, lines: list[tuple[float, float]]) -> Path:
    path.write_text("".join(json.dumps({"t": t, "temps_c": {"tj": c}}) + "\n" for t, c in lines))
    return path


T = TypeVar("T")


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()` run on a thread; the test fails when it has not returned within `seconds`."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} did not return within {seconds} s"
    if errors:
        raise errors[0]
    return result[0]


class HeldLoad:
    """Holds the int8 variant's load of a task until `release` is set; `loading` is set once it started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, engine: OnnxRuntimeEngine | None = None) -> None:
        self.loading, self.release = threading.Event(), threading.Event()
        activate = OnnxRuntimeEngine.activate

        def held(engine: OnnxRuntimeEngine) -> OnnxRuntimeEngine:
            if engine.precision == "int8":
                self.loading.set()
                self.release.wait(60)
            return activate(engine)

        if engine is None:
            monkeypatch.setattr(OnnxRuntimeEngine, "activate", held)
        else:
            monkeypatch.setattr(engine, "activate", lambda: held(engine))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hardware_source_that_is_down_is_reported_and_the_daemon_runs_on() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    reader = open_telemetry("nvml", lambda name, details: events.append((name, details)))
    assert isinstance(reader, NoneReader)
    assert events[0][0] == "telemetry.problem" and events[0][1]["source"] == "nvml"


def test_a_broken_trace_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"t": 0, "temps_c": {"tj": "hot"}}\n')
    with pytest.raises(TelemetryError, match="line 1"):
        open_telemetry(f"trace://{tmp_path}/bad.jsonl", lambda name, details: None)


def test_the_ladder_drives_the_runtime_and_says_why(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    published: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    trace = write_trace(tmp_path / "t.jsonl", [(0, 60.0), (3, 90.0), (10, 97.0), (20, 60.0)])
    section = SupervisorSection(telemetry=f"trace://{trace}", confirm_s=1, dwell_s=5, pause_after_s=3,
                                critical_c=95)
    task = runtime(tmp_path, events, priority=20)
    task.load()
    supervisor = Supervisor(section, TraceReader(trace, clock=clock),
                            lambda topic, msg: published.append((topic, msg)),
                            lambda name, details: events.append((name, details)))
    supervisor.add(task)
    try:
        seen = []
        for second in range(40):
            clock.now = float(second)
            supervisor.step()
            seen.append((task.precision, task.rate_scale))
        assert seen[:4] == [("fp32", 1.0)] * 4                            # 90 °C at 3 s, confirmed at 4 s
        assert seen[4] == ("int8", 1.0)
        assert seen[11] == ("int8", 0.5)                                   # 97 °C at 10 s, confirmed at 11 s
        assert seen[14] == ("int8", 0.0)                                   # critical 3 s: priority 20 paused
        assert seen[-1] == ("fp32", 1.0)                                   # cooled: HOT, then NORMAL
        levels = [details["level"] for name, details in events if name == "supervisor.level"]
        assert levels == ["HOT", "CRITICAL", "HOT", "NORMAL"]
        switch = next(details for name, details in events if name == "precision.switch")
        assert switch["reason"] == "tj 90.0 °C ≥ hot 85.0 °C for 1.0 s: int8" and switch["to"] == "int8"
        assert [topic for topic, _ in published] == ["sys.telemetry"] * 40
        assert published[3][1]["temps_c"] == {"tj": 90.0}
        assert supervisor.status()["level"] == "NORMAL"
    finally:
        task.unload()


def test_status_shows_the_current_reason_and_the_events_keep_the_history(tmp_path: Path) -> None:
    """Issue 16, item 18: a task's REASON in `edge status` repeated the supervisor's (the held level, why it was
    entered, twice the same telemetry text: about 250 characters). It shows the level and the task's own part of
    the decision; why the level is what it is shows once, in the supervisor's line, and the whole story of each
    switch stays in its precision.switch event."""
    events: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    trace = write_trace(tmp_path / "t.jsonl", [(1, 60.0), (2, 97.0)])         # no temperature before 1 s
    task = runtime(tmp_path, events, priority=20)
    task.load()
    supervisor = Supervisor(SupervisorSection(confirm_s=1, pause_after_s=5, critical_c=95),
                            TraceReader(trace, clock=clock), lambda *_: None,
                            lambda name, details: events.append((name, details)))
    supervisor.add(task)
    try:
        supervisor.step()
        assert supervisor.status()["reason"].startswith("no usable temperature (no zone read): holding NORMAL")
        assert task.status()["reason"] == "NORMAL: no fp16 variant: fp32"
        for second in range(1, 12):
            clock.now = float(second)
            supervisor.step()
        assert task.status()["reason"] == "CRITICAL: int8, paused (priority 20 < 50)"
        [switch] = [details for name, details in events if name == "precision.switch"]
        assert switch["reason"] == "tj 97.0 °C ≥ critical 95.0 °C for 1.0 s: int8, rate ×0.5"
    finally:
        task.unload()


def test_precision_set_pins_and_auto_gives_the_task_back(tmp_path: Path) -> None:
    clock = Clock()
    trace = write_trace(tmp_path / "t.jsonl", [(0, 90.0)])
    task = runtime(tmp_path, [])
    task.load()
    supervisor = Supervisor(SupervisorSection(confirm_s=0), TraceReader(trace, clock=clock), lambda *_: None,
                            lambda *_: None)
    supervisor.add(task)
    try:
        supervisor.step()
        assert task.precision == "int8"
        supervisor.set_mode("objects", "fp32")
        assert task.precision == "fp32" and task.mode == "fp32" and "pinned fp32" in task.reason
        clock.now = 5.0
        supervisor.step()
        assert task.precision == "fp32"                                    # pinned: hot does not move it
        supervisor.set_mode("objects", "auto")
        assert task.precision == "int8"
        with pytest.raises(EdgeError, match="cannot be pinned to fp16: no fp16 variant"):
            supervisor.set_mode("objects", "fp16")
        with pytest.raises(EdgeError, match="task trucks is not running"):
            supervisor.set_mode("trucks", "fp32")
    finally:
        task.unload()


def test_hot_swap_end_to_end_on_the_demo_video(demo: Any, tmp_path: Path, ctx: zmq.Context) -> None:
    """The daemon on the demo video (every frame, lossless), the supervisor on a trace that is hot from
    1 s to 3 s: fp32 -> int8 -> fp32 while frames flow."""
    trace = write_trace(tmp_path / "t.jsonl", [(0, 60.0), (1, 90.0), (3, 60.0)])
    text = f"""version: 1
cameras:
  - id: cam0
    uri: file://{demo.video}?realtime=0&loop=1
tasks:
  - name: objects
    type: detector
    engines: {demo.engines}
    cameras: [cam0]
    threads: 1
output:
  results: ipc://{tmp_path}/r.sock
supervisor:
  telemetry: trace://{trace}
  interval_s: 0.2
  confirm_s: 0
  dwell_s: 1
"""
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), wait_subscriber_s=PEER_S)
    results = Subscriber(f"ipc://{tmp_path}/r.sock", topics=["det.", "sys.event"], context=ctx)
    service.start()
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    dets: list[dict[str, Any]] = []
    switches: list[dict[str, Any]] = []
    try:
        while len(switches) < 2 or len(dets) < 5:
            message = results.recv(timeout=30)
            assert message is not None, f"after {len(dets)} results and switches {switches}"
            if message.topic == "sys.event" and message.payload["event"] == "precision.switch":
                switches.append(message.payload)
            elif message.topic.startswith("det."):
                dets.append(message.payload)
    finally:
        stop.set()
        runner.join(10)
        service.stop()
        results.close()
    assert [(s["from"], s["to"]) for s in switches[:2]] == [("fp32", "int8"), ("int8", "fp32")]
    assert [d["seq"] for d in dets] == list(range(len(dets)))
    assert [d["frame"] for d in dets] == list(range(len(dets)))        # every frame once (lossless file)
    runs = [dets[0]["precision"]]
    for d in dets[1:]:
        if d["precision"] != runs[-1]:
            runs.append(d["precision"])
    assert runs[:3] == ["fp32", "int8", "fp32"][:len(runs[:3])] and "int8" in runs
    assert all(d["engine"].endswith(":" + d["precision"]) for d in dets)


def test_a_pin_while_a_variant_loads_answers_at_once_and_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: with `preload: active` the supervisor loaded and warmed the variant it chose while holding its lock,
    so precision.set waited for the whole load. It loads outside the lock now and decides again after: a pin made
    meanwhile answers at once, and the load does not undo it."""
    events: list[tuple[str, dict[str, Any]]] = []
    trace = write_trace(tmp_path / "t.jsonl", [(0, 90.0)])
    task = runtime(tmp_path, events, preload="active")
    task.load()
    held = HeldLoad(monkeypatch, task.variants.engines["int8"])
    supervisor = Supervisor(SupervisorSection(confirm_s=0), TraceReader(trace, clock=Clock()), lambda *_: None,
                            lambda name, details: events.append((name, details)))
    supervisor.add(task)
    stepping = threading.Thread(target=supervisor.step)              # HOT at once: int8, not loaded yet
    stepping.start()
    try:
        assert held.loading.wait(30), "the supervisor did not load int8"
        within(10, lambda: supervisor.set_mode("objects", "fp32"))
        assert supervisor.status()["level"] == "HOT" and task.precision == "fp32"
    finally:
        held.release.set()
        stepping.join(30)
    try:
        assert not stepping.is_alive()
        assert task.precision == "fp32" and task.status()["loaded"] == ["fp32", "int8"]
        assert [name for name, _ in events] == ["supervisor.level"]            # no switch: the pin won
        supervisor.set_mode("objects", "auto")
        assert task.precision == "int8"                                        # loaded: at once
    finally:
        task.unload()


def test_a_variant_that_fails_to_load_is_decided_again_at_once(tmp_path: Path) -> None:
    """The runtime refuses the variant; the supervisor decides again from the runtime, without waiting for the next
    sample (the policy used to keep its own copy of the task and learn it a step later)."""
    events: list[tuple[str, dict[str, Any]]] = []
    trace = write_trace(tmp_path / "t.jsonl", [(0, 90.0)])
    task = runtime(tmp_path, events, preload="active")
    task.variants.engines["int8"].path.write_bytes(b"not an onnx model")
    task.load()
    supervisor = Supervisor(SupervisorSection(confirm_s=0), TraceReader(trace, clock=Clock()), lambda *_: None,
                            lambda name, details: events.append((name, details)))
    supervisor.add(task)
    try:
        supervisor.step()
        assert task.precision == "fp32" and task.unavailable["int8"].startswith("failed to load: ONNX Runtime")
        assert task.reason.startswith("HOT: int8 refused (failed to load: ONNX Runtime cannot load")
        assert task.reason.endswith(": staying on fp32")
        assert supervisor.last.decisions["objects"].precision == "fp32"
        assert [name for name, _ in events] == ["supervisor.level", "engine.refused"]
    finally:
        task.unload()


def test_status_and_precision_set_answer_while_the_supervisor_loads(demo: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, through the control socket: while the supervisor loads the int8 variant it chose (`preload: active`,
    the load held here), precision.set and status answer (they waited for the whole load: precision.set for the
    supervisor's lock, status behind it). A pin that needs a load of its own waits for it, and meanwhile the
    status snapshot the heartbeats and metrics read still answers."""
    held = HeldLoad(monkeypatch)
    trace = write_trace(tmp_path / "t.jsonl", [(0, 90.0)])
    endpoint = f"ipc://{tmp_path}/control.sock"
    text = f"""version: 1
cameras:
  - id: cam0
    uri: test://bars?size=160x120&fps=10
tasks:
  - name: objects
    type: detector
    engines: {demo.engines}
    cameras: [cam0]
    preload: active
    threads: 1
output:
  results: ipc://{tmp_path}/r.sock
control:
  endpoint: {endpoint}
supervisor:
  telemetry: trace://{trace}
  confirm_s: 0
"""
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}))
    pinning: threading.Thread | None = None
    try:
        service.start()
        assert held.loading.wait(60), "the supervisor did not load int8"
        assert control.request(endpoint, "precision.set", timeout_s=10, task="objects", mode="fp32") == {}
        [task] = control.request(endpoint, "status", timeout_s=10)["tasks"]
        assert (task["precision"], task["mode"], task["loaded"]) == ("fp32", "fp32", ["fp32"])
        pinning = threading.Thread(target=control.request, args=(endpoint, "precision.set"),
                                   kwargs={"timeout_s": 60, "task": "objects", "mode": "int8"})
        pinning.start()                                                # waits for the held load
        wait_for(lambda: service.tasks["objects"].mode == "int8", 10, "the int8 pin to be taken")
        [task] = within(10, service.status)["tasks"]
        assert (task["precision"], task["loaded"]) == ("fp32", ["fp32"])
        held.release.set()
        pinning.join(60)
        assert not pinning.is_alive()
        [task] = service.status()["tasks"]
        assert (task["precision"], task["mode"], task["loaded"]) == ("int8", "int8", ["fp32", "int8"])
    finally:
        held.release.set()
        if pinning is not None:
            pinning.join(60)
        service.stop()
