"""Task runtimes and run-time tasks, on real ONNX Runtime engines, a real publisher and subscriber and
real cameras: a precision switch at a frame boundary (every frame once, in order, each result naming the
variant that ran it), the variant a task starts on and the whole status, variants loaded on first use, variants
that cannot be used (their reasons, events and log lines), tasks enabled and disabled while the daemon runs with
their cameras following them, and status that changes nothing."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge.config.loader import parse_config
from edge.config.schema import TaskConfig
from edge.daemon.service import Service
from edge.engines.factory import CPU_FP16, Variants
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.errors import EdgeError, EngineError, SourceError
from edge.pipeline.cameras import Frame
from edge.pipeline.lanes import Lane
from edge.pipeline.runtime import TaskRuntime
from edge.wire.client import Subscriber
from edge.wire.publisher import Publisher
from tests.conftest import PEER_S, wait_for
from tests.support.lanes import IMAGE, YOLO, lossless_camera, runtime, two_variants
from tests.support.models import conv_model

BRIGHT = np.full_like(IMAGE, 255)


def stream(task: TaskRuntime, publisher: Publisher, count: int, image: np.ndarray,
           before: Callable[[Lane, int], None]) -> Lane:
    """Frames 0..count-1 through a lane on `task` (a lossless camera: none is dropped), calling
    `before(lane, index)` before frame `index` is put; returns the lane once it finished."""
    task.load()
    camera = lossless_camera()
    lane = Lane(task, camera, publisher)
    lane.start()
    stop = threading.Event()
    try:
        for index in range(count):
            before(lane, index)
            assert camera.latest.put(Frame("c", index, 10**9 + index, image), stop=stop)
        camera.latest.close()
        wait_for(lane.finished.is_set, 30, "the lane to finish")
    finally:
        lane.stop(5)
        task.unload()
    assert lane.error is None
    return lane


FP32, INT8 = "m.onnx:onnxruntime:fp32", "m.int8.onnx:onnxruntime:int8"     # the engines of `runtime`
AUTO = "auto: fp32 until the supervisor decides"


def runtime_log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """What the runtime logged, as (level, message)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "edge.runtime"]


def expected_status(precision: str, reason: str, loaded: list[str], unavailable: dict[str, str] | None = None,
                    **fields: Any) -> dict[str, Any]:
    """The whole status of a task of `runtime` (mode auto, priority 50, full rate unless `fields` say)."""
    return {"task": "objects", "precision": precision, "engine": {"fp32": FP32, "int8": INT8}[precision],
            "reason": reason, "mode": "auto", "priority": 50, "rate_scale": 1.0, "loaded": loaded,
            "unavailable": unavailable or {}} | fields


def repository_task(tmp_path: Path, unavailable: dict[str, str], **fields: Any) -> TaskRuntime:
    """A task of an engine repository (`engines:`, which may lack the precision it is pinned to) whose fp32 and
    int8 variants run and whose other precisions are `unavailable`, as the factory makes them."""
    files = two_variants(tmp_path)
    config = TaskConfig(name="objects", type="detector", engines=str(tmp_path), cameras=["c"], **fields)
    engines = {p: OnnxRuntimeEngine(f, precision=p, threads=1) for p, f in files.items()}
    return TaskRuntime(config, Variants(engines, dict(unavailable)), lambda name, details: None)


def test_a_switch_takes_effect_at_the_next_frame_and_loses_or_repeats_none(tmp_path: Path, results) -> None:
    publisher, subscriber = results
    events: list[tuple[str, dict[str, Any]]] = []
    task = runtime(tmp_path, events, precision="auto", in_flight=2)

    def switch_at_5(lane: Lane, index: int) -> None:
        if index == 5:
            wait_for(lambda: lane.stats.processed == 5, 20, "frames 0-4 to be processed")
            assert task.choose("int8", "test: hot")
    stream(task, publisher, 10, IMAGE, switch_at_5)
    messages = [subscriber.recv(timeout=10) for _ in range(10)]
    assert subscriber.recv(timeout=0) is None and subscriber.missed == 0
    assert [m.payload["frame"] for m in messages] == list(range(10))
    assert [m.seq for m in messages] == list(range(10))
    assert [m.payload["precision"] for m in messages] == ["fp32"] * 5 + ["int8"] * 5
    assert {m.payload["engine"] for m in messages[5:]} == {"m.int8.onnx:onnxruntime:int8"}
    assert events == [("precision.switch", {"task": "objects", "from": "fp32", "to": "int8",
                                            "engine": "m.int8.onnx:onnxruntime:int8", "reason": "test: hot"})]


def test_frames_in_flight_finish_on_the_variant_they_started_on(tmp_path: Path, results) -> None:
    """Switching back and forth while frames stream: each frame is published once, in order, and the
    precision in its result is the one of the engine that ran it."""
    publisher, subscriber = results
    task = runtime(tmp_path, [], in_flight=3)

    def flip(lane: Lane, index: int) -> None:
        if index % 7 == 1:
            task.choose("int8" if task.precision == "fp32" else "fp32", f"flip at {index}")
    stream(task, publisher, 60, BRIGHT, flip)
    messages = [subscriber.recv(timeout=10) for _ in range(60)]
    assert subscriber.recv(timeout=0) is None
    assert [m.payload["frame"] for m in messages] == list(range(60)) and [m.seq for m in messages] == list(range(60))
    assert all(m.payload["engine"].endswith(":" + m.payload["precision"]) for m in messages)
    ran_int8 = [bool(m.payload["detections"]) for m in messages]       # what the engine that ran it says
    assert [m.payload["precision"] == "int8" for m in messages] == ran_int8
    assert {m.payload["precision"] for m in messages} == {"fp32", "int8"}


def test_preload_active_loads_a_variant_when_it_is_first_chosen(tmp_path: Path) -> None:
    task = runtime(tmp_path, [], preload="active")
    task.load()
    try:
        assert task.status()["loaded"] == ["fp32"]
        assert task.choose("int8", "hot")
        assert task.status()["loaded"] == ["fp32", "int8"] and task.active().precision == "int8"
    finally:
        task.unload()
    assert not any(e.is_active for e in task.variants.engines.values())


def test_nothing_loads_after_unload(tmp_path: Path) -> None:
    """The supervisor loads a variant outside its lock: a task unloaded meanwhile (disabled, or the daemon stopping)
    must not get a variant loaded after its unload, where nothing would free it."""
    task = runtime(tmp_path, [], preload="active")
    task.load()
    assert task.needs_load("int8") and not task.needs_load("fp32") and not task.needs_load("fp16")
    task.unload()
    assert not task.needs_load("int8") and not task.load_variant("int8")
    assert not any(e.is_active for e in task.variants.engines.values())


def test_a_variant_with_other_tensors_is_refused_and_the_task_keeps_running(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    files = two_variants(tmp_path)
    conv_model(files["int8"], input_shape=[1, 3, 96, 96], out_channels=21, stride=32, yolo_meta=YOLO)
    config = TaskConfig(name="objects", type="detector", variants={p: str(f) for p, f in files.items()},
                        cameras=["c"])
    engines = {p: OnnxRuntimeEngine(f, precision=p, threads=1) for p, f in files.items()}
    task = TaskRuntime(config, Variants(engines, {}), lambda name, details: events.append((name, details)))
    task.load()
    try:
        assert task.active().precision == "fp32" and not engines["int8"].is_active
        what = "task objects: m.int8.onnx:onnxruntime:int8 does not have the tensors of m.onnx:onnxruntime:fp32"
        assert task.status()["unavailable"] == {"int8": f"failed to load: {what}"}
        assert events == [("engine.refused", {"task": "objects", "precision": "int8", "reason": what})]
        assert not task.choose("int8", "hot") and task.precision == "fp32"
    finally:
        task.unload()


def test_choosing_what_cannot_run_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    task = runtime(tmp_path, [], precision="fp32")
    task.load()
    try:
        assert task.reason == "pinned to fp32 by the config"
        with caplog.at_level("WARNING"):
            assert not task.choose("fp16", "cool")
        assert runtime_log(caplog) == [("WARNING", "task objects: cannot switch to fp16: no such variant")]
        assert not task.choose("fp32", "still cool") and task.reason == "still cool"
    finally:
        task.unload()


def service_config(demo: Any, tmp_path: Path) -> str:
    return f"""version: 1
cameras:
  - id: c0
    uri: test://bars?size=160x120&fps=30
  - id: c1
    uri: test://bars?size=160x120&fps=30
tasks:
  - name: people
    type: detector
    model: {demo.model}
    cameras: [c0]
    threads: 1
  - name: cars
    type: detector
    model: {demo.model}
    cameras: [c0, c1]
    enabled: false
    threads: 1
output:
  results: ipc://{tmp_path}/r.sock
supervisor:
  telemetry: none
"""


def test_tasks_start_and_stop_at_run_time_and_cameras_follow_them(demo: Any, tmp_path: Path,
                                                                  ctx: zmq.Context) -> None:
    service = Service(parse_config(service_config(demo, tmp_path), source="t", base_dir=tmp_path, environ={}))
    events = Subscriber(f"ipc://{tmp_path}/r.sock", topics=["sys.event"], context=ctx)
    service.start()
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: service.publisher.subscriptions == 1, PEER_S, "the event subscriber to be connected")
        assert set(service.cameras.open) == {"c0"}                   # cars is disabled: c1 is never opened
        service.enable_task("cars")
        assert set(service.cameras.open) == {"c0", "c1"} and set(service.tasks) == {"people", "cars"}
        wait_for(lambda: all(lane.stats.processed > 0 for lane in service.lanes), 60, "every lane to run")
        service.disable_task("people")
        assert set(service.cameras.open) == {"c0", "c1"}             # cars still reads c0
        service.disable_task("cars")
        assert service.cameras.open == {} and service.lanes == [] and service.tasks == {}
        assert runner.is_alive()                                     # nothing running is not an end
        with pytest.raises(EdgeError, match="no task named 'trucks'"):
            service.enable_task("trucks")
        with pytest.raises(EdgeError, match="task cars is not running"):
            service.disable_task("cars")
        with pytest.raises(EdgeError, match="no task named 'ghost' in the config"):   # was "not running"
            service.disable_task("ghost")
        service.enable_task("people")
        with pytest.raises(EdgeError, match="task people is running already"):
            service.enable_task("people")
        wait_for(lambda: service.lanes and service.lanes[0].stats.processed > 0, 60, "people to run again")
        seen = []
        while len(seen) < 4:
            message = events.recv(timeout=10)
            assert message is not None, f"events so far: {seen}"
            seen.append((message.payload["event"], message.payload["task"]))
        assert seen == [("task.enabled", "cars"), ("task.disabled", "people"), ("task.disabled", "cars"),
                        ("task.enabled", "people")]
    finally:
        stop.set()
        runner.join(10)
        service.stop()
        events.close()


def test_status_is_a_snapshot_that_changes_nothing(demo: Any, tmp_path: Path) -> None:
    """The old heartbeat reset the fps window as it read it: a second read right after said 0 fps."""
    service = Service(parse_config(service_config(demo, tmp_path), source="t", base_dir=tmp_path, environ={}),
                      max_frames=3)
    service.start()
    try:
        wait_for(lambda: service.lanes[0].finished.is_set(), 60, "the lane to process its 3 frames")
        wait_for(lambda: service.lanes[0].sender.published == 3, 10, "the 3 results to be sent")
        lane, now = service.lanes[0], service.lanes[0].sender.sent_ns[-1]
        first = lane.status(now)
        assert first["fps"] == 3 / 2.0 and first["processed"] == 3      # 3 results within the 2 s window
        service.publish_heartbeat()
        service.status()
        assert lane.status(now) == first
        tasks = service.status()["tasks"]
        assert tasks[0]["reason"] == "NORMAL: no fp16 variant: fp32"
        service.publish_heartbeat()
        assert service.status()["tasks"] == tasks
    finally:
        service.stop()


def test_a_variant_that_fails_to_load_is_refused_and_the_next_one_runs(tmp_path: Path) -> None:
    """A corrupt fp32 file: the task starts on int8, says why, and fails only when nothing loads."""
    events: list[tuple[str, dict[str, Any]]] = []
    task = runtime(tmp_path, events)
    task.variants.engines["fp32"].path.write_bytes(b"not an onnx model")
    task.load()
    try:
        assert task.active().precision == "int8"
        assert task.unavailable["fp32"].startswith("failed to load: ONNX Runtime cannot load")
        assert task.reason.startswith("fp32 failed to load (ONNX Runtime cannot load")
        assert [name for name, _ in events] == ["engine.refused"]
    finally:
        task.unload()
    (tmp_path / "broken").mkdir()
    broken = runtime(tmp_path / "broken", [])
    for engine in broken.variants.engines.values():
        engine.path.write_bytes(b"garbage")
    with pytest.raises(EngineError, match="ONNX Runtime cannot load"):
        broken.load()
    assert not any(e.is_active for e in broken.variants.engines.values())


def test_enabling_a_task_whose_camera_cannot_open_starts_nothing(demo: Any, tmp_path: Path) -> None:
    """task.enable prepares like a reload: a task the file disables reads a camera no running task opened, and
    that camera is opened before anything starts (it was opened after the task's lanes had started)."""
    text = service_config(demo, tmp_path).replace("    uri: test://bars?size=160x120&fps=30\ntasks:",
                                                  f"    uri: file://{tmp_path}/missing.avi\ntasks:")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}))
    service.start()
    try:
        with pytest.raises(SourceError, match="camera 'c1': camera file does not exist"):
            service.enable_task("cars")
        assert set(service.tasks) == {"people"} and [lane.name for lane in service.lanes] == ["people.c0"]
        assert set(service.cameras.open) == {"c0"}
    finally:
        service.stop()


def test_unload_waits_a_bounded_time_for_a_load_and_the_load_frees_what_it_finds_unloaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stop must not outlast its timeout behind an engine load (a TensorRT plan takes seconds to deserialize),
    and an engine is never freed while its native load runs: the load frees the task's engines when it ends."""
    task = runtime(tmp_path, [], preload="active")
    task.load()
    int8 = task.variants.engines["int8"]
    loading, release = threading.Event(), threading.Event()
    activate = int8.activate

    def held() -> Any:
        loading.set()
        release.wait(60)
        return activate()

    monkeypatch.setattr(int8, "activate", held)
    outcome: list[bool] = []
    loader = threading.Thread(target=lambda: outcome.append(task.load_variant("int8")), daemon=True)
    loader.start()
    assert loading.wait(30)
    with caplog.at_level("WARNING", logger="edge.runtime"):
        assert task.unload(timeout=0.1) is False                 # gave up waiting; nothing freed under the load
    assert runtime_log(caplog) == [("WARNING", "task objects: a variant is still loading after 0.1 s; the task's"
                                               " engines are freed when that load ends")]
    assert task.variants.engines["fp32"].is_active
    release.set()
    loader.join(30)
    assert outcome == [False]
    assert not any(engine.is_active for engine in task.variants.engines.values())
    assert task.load_variant("int8") is False and task.unload(timeout=1) is True


@pytest.mark.parametrize(("precision", "preload", "running", "loaded"), [
    ("auto", "all", "fp32", ["fp32", "int8"]), ("auto", "active", "fp32", ["fp32"]),
    ("fp32", "all", "fp32", ["fp32", "int8"]), ("int8", "all", "int8", ["fp32", "int8"]),
    ("int8", "active", "int8", ["int8"])])
def test_a_task_starts_on_its_pinned_or_preferred_variant_and_loads_what_preload_says(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, precision: str, preload: str, running: str,
        loaded: list[str]) -> None:
    """auto runs the first variant of PREFERENCE (fp16, fp32, int8) it has; the active one loads first."""
    task = runtime(tmp_path, [], precision=precision, preload=preload, priority=70)
    reason = AUTO if precision == "auto" else f"pinned to {precision} by the config"
    assert task.status() == expected_status(running, reason, [], mode=precision, priority=70)
    with caplog.at_level("INFO", logger="edge.runtime"):
        task.load()
    try:
        assert task.status() == expected_status(running, reason, loaded, mode=precision, priority=70)
        order = [running] + [p for p in loaded if p != running]
        assert runtime_log(caplog) == [("INFO", f"task objects: loading {task.variants.engines[p].name}")
                                       for p in order] + [
            ("INFO", f"task objects: running {task.active().name} ({reason}); loaded {', '.join(loaded)}")]
    finally:
        task.unload()
    assert task.status()["loaded"] == []


@pytest.mark.parametrize(("unavailable", "why"), [({"fp16": CPU_FP16}, CPU_FP16), ({}, "not present")])
def test_a_task_pinned_to_a_variant_that_cannot_run_runs_the_preferred_one_and_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, unavailable: dict[str, str], why: str) -> None:
    task = repository_task(tmp_path, unavailable, precision="fp16")
    reason = f"pinned to fp16 by the config, which cannot run ({why})"
    with caplog.at_level("INFO", logger="edge.runtime"):
        task.load()
    try:
        assert task.status() == expected_status("fp32", reason, ["fp32", "int8"], unavailable, mode="fp16")
        assert runtime_log(caplog)[-1] == ("WARNING", f"task objects: running {FP32} ({reason}); loaded fp32, int8")
    finally:
        task.unload()


def test_a_task_with_no_variant_that_can_run_says_why(tmp_path: Path) -> None:
    config = TaskConfig(name="objects", type="detector", engines=str(tmp_path), cameras=["c"])
    why = {"int8": "refused when it was made: F1 0.41 below 0.5"}
    with pytest.raises(EngineError) as refused:
        TaskRuntime(config, Variants({}, why), lambda name, details: None)
    assert (refused.value.what, refused.value.note) == ("task objects: nothing to run", str(why))


def test_a_variant_missing_at_start_is_refused_with_its_reason_and_the_next_one_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    task = runtime(tmp_path, events)
    missing = task.variants.engines["fp32"].path
    missing.unlink()
    what = f"model file does not exist: {missing}"
    with caplog.at_level("INFO", logger="edge.runtime"):
        task.load()
    try:
        reason = f"fp32 failed to load ({what}): int8"
        assert task.status() == expected_status("int8", reason, ["int8"], {"fp32": f"failed to load: {what}"})
        assert events == [("engine.refused", {"task": "objects", "precision": "fp32", "reason": what})]
        lines = runtime_log(caplog)
        refused, hint = lines[1][1].split("\n")                     # the error as it renders: what, then its hint
        assert (lines[1][0], refused, hint.startswith("Hint: ")) == (
            "WARNING", f"task objects: the fp32 variant cannot be used: {what}", True)
        assert lines[:1] + lines[2:] == [("INFO", f"task objects: loading {FP32}"),
                                         ("INFO", f"task objects: loading {INT8}"),
                                         ("INFO", f"task objects: running {INT8} ({reason}); loaded int8")]
    finally:
        task.unload()


def test_a_variant_that_fails_to_load_when_chosen_is_refused_once_and_nothing_switches(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    task = runtime(tmp_path, events, preload="active")
    task.load()
    missing = task.variants.engines["int8"].path
    missing.unlink()
    what = f"model file does not exist: {missing}"
    try:
        with caplog.at_level("WARNING", logger="edge.runtime"):
            assert task.choose("int8", "HOT") is False
            assert task.load_variant("int8") is False and task.load_variant("fp16") is False
            assert task.choose("int8", "HOT again") is False
        assert events == [("engine.refused", {"task": "objects", "precision": "int8", "reason": what})]
        assert task.status() == expected_status("fp32", AUTO, ["fp32"], {"int8": f"failed to load: {what}"})
        assert [(level, message.split("\n")[0]) for level, message in runtime_log(caplog)] == [
            ("WARNING", f"task objects: the int8 variant cannot be used: {what}"),
            ("WARNING", f"task objects: cannot switch to int8: failed to load: {what}")]
    finally:
        task.unload()


def test_a_switch_logs_and_sends_its_cause_and_status_shows_its_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    task = runtime(tmp_path, events, preload="active")
    task.load()
    cause = "HOT: 81.0 C for 5.0 s: fp32 -> int8"
    try:
        with caplog.at_level("INFO", logger="edge.runtime"):
            assert task.choose("int8", "HOT: int8", cause=cause) is True
            assert task.status() == expected_status("int8", "HOT: int8", ["fp32", "int8"])
            assert task.choose("fp32", "NORMAL: fp32") is True
        assert runtime_log(caplog) == [("INFO", f"task objects: loading {INT8}"),     # loaded, then switched to
                                       ("INFO", f"task objects: fp32 -> int8: {cause}"),
                                       ("INFO", "task objects: int8 -> fp32: NORMAL: fp32")]
        assert events == [
            ("precision.switch", {"task": "objects", "from": "fp32", "to": "int8", "engine": INT8, "reason": cause}),
            ("precision.switch", {"task": "objects", "from": "int8", "to": "fp32", "engine": FP32,
                                  "reason": "NORMAL: fp32"})]
        assert task.status() == expected_status("fp32", "NORMAL: fp32", ["fp32", "int8"])
    finally:
        task.unload()
