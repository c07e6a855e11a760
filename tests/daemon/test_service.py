"""The service in-process: lifecycle, thread defaults, and a lane failure injected at run time."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.errors import EdgeError, EngineError
from edge.tasks.detector import YoloDetector
from tests.conftest import wait_for


def config(demo, tmp_path: Path, cameras: int = 1, tasks_extra: str = ""):
    cams = "".join(f"  - id: c{i}\n    uri: file://{demo.video}?realtime=0\n" for i in range(cameras))
    text = (f"version: 1\ncameras:\n{cams}tasks:\n  - name: objects\n    type: detector\n    model: {demo.model}\n"
            f"    cameras: [{', '.join(f'c{i}' for i in range(cameras))}]\n{tasks_extra}"
            f"output:\n  results: ipc://{tmp_path}/r.sock\n")
    return parse_config(text, source="test", base_dir=tmp_path, environ={})


def test_threads_default_to_cores_shared_by_lanes(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    service = Service(config(demo, tmp_path, cameras=2), max_frames=1)
    service.start()
    try:
        assert service.tasks["objects"].active().threads == 2
        assert service.run(threading.Event()) == 0
    finally:
        service.stop()


def test_failing_lane_ends_the_service_with_1(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection in the run phase: postprocessing fails on the third frame."""
    original, calls = YoloDetector.postprocess, []

    def failing(self, outputs, meta):
        calls.append(1)
        if len(calls) == 3:
            raise EngineError("injected fault")
        return original(self, outputs, meta)
    monkeypatch.setattr(YoloDetector, "postprocess", failing)
    service = Service(config(demo, tmp_path))
    service.start()
    assert service.run(threading.Event()) == 1
    assert "injected fault" in str(service.lanes[0].error)
    assert service.lanes[0].stats.processed == 2
    service.stop()


def test_a_crash_in_a_lane_is_an_error_too(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(YoloDetector, "postprocess", lambda self, outputs, meta: 1 / 0)
    service = Service(config(demo, tmp_path))
    service.start()
    assert service.run(threading.Event()) == 1
    assert "ZeroDivisionError" in str(service.lanes[0].error)
    service.stop()


def test_start_failure_releases_what_was_started(demo, tmp_path: Path) -> None:
    cfg = config(demo, tmp_path, tasks_extra="    enabled: false\n")
    service = Service(cfg)
    with pytest.raises(EdgeError, match="no task is enabled"):
        service.start()
    again = Service(cfg.model_copy(update={"tasks": [cfg.tasks[0].model_copy(update={"enabled": True})]}),
                    max_frames=1)
    again.start()                      # the endpoint was released by the failed start
    assert again.run(threading.Event()) == 0
    again.stop()


def test_stop_while_running_is_bounded(demo, tmp_path: Path) -> None:
    """The stop request arrives while the lane is busy on the 795-frame video: run() returns 0 and
    stop() releases everything within its timeout, long before the video would end."""
    service = Service(config(demo, tmp_path))
    service.start()
    runtime, lanes = service.tasks["objects"], service.lanes
    stop, codes = threading.Event(), []
    runner = threading.Thread(target=lambda: codes.append(service.run(stop)))
    runner.start()
    wait_for(lambda: service.lanes[0].stats.processed >= 2, 60, "frames to flow")
    stop.set()
    runner.join(10)
    assert not runner.is_alive() and codes == [0]
    started = time.monotonic()
    service.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert lanes and all(lane.finished.is_set() for lane in lanes)
    assert not service.tasks and not any(e.is_active for e in runtime.variants.engines.values())
    assert lanes[0].stats.processed < 795                     # stopped mid-stream, not at its end


def test_stop_is_bounded_when_a_lane_hangs(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection in the run phase: the lane hangs in postprocessing (like an inference that never
    returns). stop(1) gives up on it after its share of the timeout instead of waiting for it."""
    hung, unblock = threading.Event(), threading.Event()
    original = YoloDetector.postprocess

    def hanging(self, outputs, meta):
        hung.set()
        unblock.wait(30)
        return original(self, outputs, meta)
    monkeypatch.setattr(YoloDetector, "postprocess", hanging)
    service = Service(config(demo, tmp_path))
    service.start()
    wait_for(hung.is_set, 60, "the lane to hang")
    lane = service.lanes[0]
    watchdog = threading.Timer(15, unblock.set)                      # an unbounded stop returns late, and fails
    watchdog.start()
    started = time.monotonic()
    service.stop(timeout=1)
    elapsed = time.monotonic() - started
    hung_through_stop = not lane.finished.is_set()
    unblock.set()
    watchdog.cancel()
    assert hung_through_stop and elapsed < 3                         # 1 s for the lane, 0.1 s floors for the rest
    wait_for(lane.finished.is_set, 10, "the released lane to end")
