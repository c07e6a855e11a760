"""Task runtimes and run-time tasks, on real ONNX Runtime engines, a real publisher and subscriber and
real cameras: a precision switch at a frame boundary (every frame once, in order, each result naming the
variant that ran it), variants loaded on first use, variants that cannot be used, tasks enabled and
disabled while the daemon runs with their cameras following them, and status that changes nothing."""
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
from edge.engines.factory import Variants
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
        assert "does not have the tensors of" in task.unavailable["int8"]
        assert [name for name, _ in events] == ["engine.refused"]
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
        assert "cannot switch to fp16: no such variant" in caplog.text
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


def test_unload_waits_a_bounded_time_for_a_load_and_the_load_frees_what_it_finds_unloaded(tmp_path: Path,
                                                                                         monkeypatch) -> None:
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
    assert task.unload(timeout=0.05) is False                    # gave up waiting; nothing freed under the load
    assert task.variants.engines["fp32"].is_active
    release.set()
    loader.join(30)
    assert outcome == [False]
    assert not any(engine.is_active for engine in task.variants.engines.values())
    assert task.load_variant("int8") is False and task.unload(timeout=1) is True
