"""The lane loop on real ONNX Runtime (a tiny YOLO-shaped model; the demo model for the payload), a real
publisher and subscriber: K frames in flight, camera drop counting, the rate limit, max_frames, the
payload, stop and failures."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config.schema import TaskConfig
from edge.engines.base import Pending, Slot
from edge.engines.factory import Variants
from edge.engines.onnxruntime import OnnxRuntimeEngine, OrtSlot
from edge.errors import EngineError
from edge.pipeline import lanes
from edge.pipeline.cameras import Camera, EndOfStream, Frame
from edge.pipeline.lanes import Lane
from edge.pipeline.runtime import TaskRuntime
from edge.tasks import build_task
from edge.tasks.detector import YoloDetector
from edge.wire.client import Subscriber
from edge.wire.publisher import Publisher
from tests.conftest import wait_for
from tests.support.lanes import IMAGE, YOLO, lossless_camera, published
from tests.support.models import conv_model


def tiny_yolo(path: Path) -> Path:
    """A real ONNX model with the detector's input and head layout: [1,3,64,64] -> [1,21,2,2]."""
    return conv_model(path, input_shape=[1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=YOLO)


def task_config(model: Path, **fields: object) -> TaskConfig:
    return TaskConfig(name="objects", type="detector", model=str(model), cameras=["c"], **fields)


def published_frames(subscriber: Subscriber, count: int) -> list[int]:
    messages = published(subscriber, count)
    assert all(m.topic == "det.objects.c" and "labels" not in m.payload for m in messages)
    return [m.payload["frame"] for m in messages]


def runtime_of(config: TaskConfig, engine: OnnxRuntimeEngine) -> TaskRuntime:
    """A task runtime over one engine the test activated."""
    runtime = TaskRuntime(config, Variants({engine.precision: engine}, {}), lambda *_: None)
    runtime.load()
    return runtime


def run_lane(config: TaskConfig, engine: OnnxRuntimeEngine, camera: object, publisher: Publisher,
             feed: Callable[[Lane], None] = lambda lane: None, **options: object) -> Lane:
    """Start a lane, let `feed` drive its camera, wait until the lane has finished (end of stream)."""
    lane = Lane(runtime_of(config, engine), camera, publisher, **options)   # type: ignore[arg-type]
    lane.start()
    feed(lane)
    wait_for(lane.finished.is_set, 20, "the lane to finish at the end of the stream")
    assert lane.error is None
    assert (lane.stats.task, lane.stats.camera) == ("objects", "c")
    wait_for(lambda: lane.sender.published == lane.stats.processed, 10, "the publisher to count the lane's results")
    return lane


def feed_frames(camera: Camera, frames: list[tuple[int, int]]) -> Callable[[Lane], None]:
    """Put (index, t_capture_ns) frames into the camera's real lossless LatestFrame, each after the lane read the
    one before (LatestFrame.put waits for that), then end the stream."""
    def feed(lane: Lane) -> None:
        stop = threading.Event()
        (index, t_ns), *rest = frames
        assert camera.latest.put(Frame(camera.id, index, t_ns, IMAGE), stop=stop)
        wait_for(lambda: lane.stats.captured == 1, 10, "the lane to read its first frame")   # its reader exists
        for index, t_ns in rest:
            assert camera.latest.put(Frame(camera.id, index, t_ns, IMAGE), stop=stop)
        camera.latest.close()
    return feed


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[OnnxRuntimeEngine]:
    with OnnxRuntimeEngine(tiny_yolo(tmp_path / "tiny.onnx"), threads=1) as engine:
        yield engine


@pytest.mark.parametrize("indexes,dropped", [([0, 3, 4, 7], 4), ([2, 5, 6, 9], 4), ([0, 1, 2], 0)])
def test_dropped_camera_counts_the_frames_the_lane_never_saw(tiny, results, indexes: list[int],
                                                              dropped: int) -> None:
    """Frames before the lane's first one are not drops; a jump from n to m drops m - n - 1."""
    publisher, subscriber = results
    camera = lossless_camera()
    lane = run_lane(task_config(tiny.path), tiny, camera, publisher,
                    feed_frames(camera, [(i, 10**9 + i) for i in indexes]))
    assert (lane.stats.captured, lane.stats.processed, lane.stats.dropped_camera) == (len(indexes), len(indexes),
                                                                                      dropped)
    assert published_frames(subscriber, len(indexes)) == indexes


@pytest.mark.parametrize("hz,step_ns", [(10.0, 50_000_000), (0.5, 1_000_000_000)])
def test_rate_limit_skips_frames_closer_than_its_period(tiny, results, hz: float, step_ns: int) -> None:
    """A limit of half the camera's rate takes every other frame. A frame exactly one period after the last
    accepted one is accepted."""
    publisher, subscriber = results
    camera = lossless_camera()
    t0 = 5 * 10**9
    lane = run_lane(task_config(tiny.path, rate_limit_hz=hz), tiny, camera, publisher,
                    feed_frames(camera, [(i, t0 + i * step_ns) for i in range(7)]))
    assert (lane.stats.captured, lane.stats.skipped_rate, lane.stats.processed) == (7, 3, 4)
    assert published_frames(subscriber, 4) == [0, 2, 4, 6]


def test_rate_limit_accepts_the_first_frame_soon_after_boot(tiny, results) -> None:
    """CLOCK_MONOTONIC counts from boot: a vehicle's daemon sees its first frames seconds after it. With a
    limit of one frame a minute the first frame must still be processed, not the first after 60 s of uptime."""
    publisher, subscriber = results
    camera = lossless_camera()
    lane = run_lane(task_config(tiny.path, rate_limit_hz=1 / 60), tiny, camera, publisher,
                    feed_frames(camera, [(0, 20 * 10**9), (1, 21 * 10**9)]))      # 20 s after boot
    assert lane.stats.skipped_rate == 1
    assert published_frames(subscriber, 1) == [0]


def test_without_rate_limit_every_frame_is_processed(tiny, results) -> None:
    publisher, subscriber = results
    camera = lossless_camera()
    lane = run_lane(task_config(tiny.path), tiny, camera, publisher,
                    feed_frames(camera, [(i, 10**9) for i in range(4)]))     # even with one timestamp
    assert lane.stats.skipped_rate == 0
    assert published_frames(subscriber, 4) == [0, 1, 2, 3]


class ReadyCamera:
    """Stands in for a fast camera: the next frame is always ready when the lane asks (frames 0..count-1,
    then the end of the stream), so the lane never has a reason to wait for the oldest result early.
    Records what the lane asks of its LatestFrame."""

    id = "c"

    def __init__(self, count: int, image: np.ndarray = IMAGE) -> None:
        self.count = count
        self.image = image
        self.latest = self
        self.frames: list[Frame] = []
        self.timeouts: list[float] = []
        self.readers: list[str] = []

    def register(self) -> int:
        self.readers.append("register 7")
        return 7

    def unregister(self, reader: int) -> None:
        self.readers.append(f"unregister {reader}")

    def get_after(self, reader: int, index: int, timeout: float) -> Frame:
        assert reader == 7, "get_after with another reader id than register() gave"
        self.timeouts.append(timeout)
        if index + 1 >= self.count:
            raise EndOfStream
        self.frames.append(Frame(self.id, index + 1, time.monotonic_ns(), self.image))
        return self.frames[-1]


class HeldResults:
    """Real inference, but every result is held back until the test releases them (like GPU work still
    running). Records how many submissions were in flight when the lane first waited for a result."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.released = False
        self.submitted = 0
        self.completed = 0
        self.in_flight_at_first_wait: int | None = None
        self.most_in_flight = 0

    def on_submit(self) -> None:
        with self.cond:
            self.submitted += 1
            self.most_in_flight = max(self.most_in_flight, self.submitted - self.completed)

    def hold(self, timeout: float | None) -> None:
        """Wait for the release; like a real pending, give up after `timeout` (None: the test's own 10 s)."""
        with self.cond:
            if self.in_flight_at_first_wait is None:
                self.in_flight_at_first_wait = self.submitted - self.completed
                self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.released, timeout=10 if timeout is None else timeout):
                raise EngineError(f"held: inference did not finish within {timeout} s")
            self.completed += 1

    def wait_first_wait(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.in_flight_at_first_wait is not None, 10), "lane never waited"

    def release(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()


class _HeldPending(Pending):
    def __init__(self, inner: Pending, held: HeldResults) -> None:
        super().__init__(lambda: None)                  # the inner pending frees the slot's buffer
        self._inner = inner
        self._held = held

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        self._held.hold(timeout)
        return self._inner.wait(timeout)


class _HeldSlot(OrtSlot):
    engine: HeldEngine

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        self.engine.held.on_submit()
        return _HeldPending(super()._submit_impl(index, release), self.engine.held)


class HeldEngine(OnnxRuntimeEngine):
    def __init__(self, path: Path, held: HeldResults) -> None:
        super().__init__(path, threads=1)
        self.held = held
        self.slot_names: list[str] = []

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        self.slot_names.append(name)
        return _HeldSlot(self, name, depth)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_lane_keeps_k_frames_in_flight(tmp_path: Path, results, k: int) -> None:
    publisher, subscriber = results
    held, camera = HeldResults(), ReadyCamera(6)
    threads = {}

    def first_wait_then_release(lane: Lane) -> None:
        held.wait_first_wait()
        threads.update((t.name, t.daemon) for t in threading.enumerate())
        held.release()
    with HeldEngine(tiny_yolo(tmp_path / "tiny.onnx"), held) as engine:
        lane = run_lane(task_config(engine.path, in_flight=k), engine, camera, publisher, first_wait_then_release)
    assert held.in_flight_at_first_wait == k                  # K submitted before the first result was awaited
    assert held.most_in_flight == k                           # and never more
    assert lane.stats.processed == 6
    assert published_frames(subscriber, 6) == list(range(6))  # results in frame order
    assert engine.slot_names == ["objects.c"]
    assert threads["lane-objects.c"] is True                  # named for py-spy and logs; never blocks exit
    assert camera.readers == ["register 7", "unregister 7"]


def test_lane_waits_for_frames_only_with_nothing_in_flight(tiny, results) -> None:
    """With results in flight the lane never lets a camera delay them (timeout 0); idle it waits (no spin)."""
    publisher, _ = results
    camera = ReadyCamera(5)
    run_lane(task_config(tiny.path, in_flight=2), tiny, camera, publisher)
    assert camera.timeouts[0] == lanes.IDLE_POLL_S > 0
    assert camera.timeouts[1:] and set(camera.timeouts[1:]) == {0.0}


@pytest.mark.parametrize("max_frames", [1, 3])
def test_max_frames_ends_the_lane(tiny, results, max_frames: int) -> None:
    publisher, subscriber = results
    run_lane(task_config(tiny.path), tiny, ReadyCamera(10), publisher, max_frames=max_frames)
    assert published_frames(subscriber, max_frames) == list(range(max_frames))


def test_payload_is_the_detectors_output_in_source_pixels(demo, results) -> None:
    publisher, subscriber = results
    image = cv2.imread(str(demo.image("dog.jpg")))
    camera = ReadyCamera(1, image)
    config = TaskConfig(name="objects", type="detector", model=str(demo.model), cameras=["c"])
    with OnnxRuntimeEngine(demo.model, threads=1) as engine:
        run_lane(config, engine, camera, publisher, include_labels=True)
        task = build_task(config, engine)
        slot = engine.create_slot("check", depth=1)
        buf = slot.input()
        meta = task.preprocess(image, buf)
        expected = task.postprocess(slot.submit(buf).wait(), meta)
        [message] = published(subscriber, 1)
    assert len(expected) >= 4                                     # dog, bicycle, cars
    assert message.topic == "det.objects.c"
    payload = message.payload
    assert {k: payload[k] for k in ("kind", "task", "camera", "frame", "t_capture_ns", "precision", "engine",
                                    "size")} == {
        "kind": "det", "task": "objects", "camera": "c", "frame": 0, "t_capture_ns": camera.frames[0].t_capture_ns,
        "precision": "fp32", "engine": engine.name, "size": [768, 576]}
    assert payload["detections"] == [[round(float(v), 1) for v in row[:4]] + [round(float(row[4]), 4), int(row[5])]
                                     for row in expected]          # 0.1 px, 4 decimals of score, int class
    assert payload["labels"] == [task.labels[int(row[5])] for row in expected]


def test_stop_says_whether_the_lane_ended(tmp_path: Path, results, caplog: pytest.LogCaptureFixture) -> None:
    publisher, _ = results
    held = HeldResults()
    with HeldEngine(tiny_yolo(tmp_path / "tiny.onnx"), held) as engine:
        config = task_config(engine.path)
        lane = Lane(runtime_of(config, engine), ReadyCamera(100), publisher)  # type: ignore[arg-type]
        lane.start()
        held.wait_first_wait()
        with caplog.at_level("WARNING", logger="edge.pipeline"):
            assert lane.stop(0.1) is False                             # blocked on its held result
        assert [r.getMessage() for r in caplog.records] == ["objects.c did not stop within 0.1 s"]
        held.release()
        assert lane.stop(10) is True
    assert lane.finished.is_set() and lane.error is None and lane.stats.processed < 100


def test_inference_timeout_fails_the_lane(tmp_path: Path, results, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A result that never comes ends the lane with an error after INFER_TIMEOUT_S, not never."""
    publisher, _ = results
    monkeypatch.setattr(lanes, "INFER_TIMEOUT_S", 0.2)
    with HeldEngine(tiny_yolo(tmp_path / "tiny.onnx"), HeldResults()) as engine:
        config = task_config(engine.path)
        lane = Lane(runtime_of(config, engine), ReadyCamera(5), publisher)  # type: ignore[arg-type]
        with caplog.at_level("ERROR", logger="edge.pipeline"):
            lane.start()
            wait_for(lane.finished.is_set, 20, "the lane to give up")
    assert str(lane.error) == "held: inference did not finish within 0.2 s"
    assert [r.getMessage() for r in caplog.records] == ["objects.c failed: held: inference did not finish within 0.2 s"]


def test_a_crash_in_the_task_fails_the_lane(tiny, results, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    publisher, _ = results
    monkeypatch.setattr(YoloDetector, "postprocess", lambda self, outputs, meta: 1 / 0)
    config = task_config(tiny.path)
    lane = Lane(runtime_of(config, tiny), ReadyCamera(5), publisher)  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="edge.pipeline"):
        lane.start()
        wait_for(lane.finished.is_set, 20, "the lane to end")
    assert str(lane.error) == "lane objects.c crashed: ZeroDivisionError('division by zero')"
    [record] = caplog.records
    assert record.getMessage() == "objects.c crashed" and record.exc_info[0] is ZeroDivisionError   # with traceback
