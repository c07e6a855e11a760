"""The lane loop on real ONNX Runtime (a tiny YOLO-shaped model), a real publisher and subscriber:
K frames in flight, camera drop counting, the rate limit."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge.backends.base import Pending, Slot
from edge.backends.onnxruntime import OnnxRuntimeEngine, OrtSlot
from edge.client import Subscriber
from edge.config import TaskConfig
from edge.errors import EngineError
from edge.pipeline import Lane
from edge.publisher import Publisher
from edge.sources import Camera, EndOfStream, Frame, parse_uri
from edge.tasks import build_task
from tests.conftest import wait_for
from tests.models import conv_model

IMAGE = np.zeros((48, 64, 3), np.uint8)
YOLO = {"anchors": [[[10, 14], [23, 27], [37, 58]]], "strides": [32], "labels": ["a", "b"]}


def tiny_yolo(path: Path) -> Path:
    """A real ONNX model with the detector's input and head layout: [1,3,64,64] -> [1,21,2,2]."""
    return conv_model(path, input_shape=[1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=YOLO)


def task_config(model: Path, **fields: object) -> TaskConfig:
    return TaskConfig(name="objects", type="detector", model=str(model), cameras=["c"], **fields)


@pytest.fixture
def results(ctx: zmq.Context, ipc_endpoint: str) -> Iterator[tuple[Publisher, Subscriber]]:
    publisher = Publisher(ipc_endpoint, context=ctx)
    publisher.start()
    subscriber = Subscriber(ipc_endpoint, topics=["det."], context=ctx)
    assert publisher.wait_for_subscriber(10), "subscription did not arrive"
    yield publisher, subscriber
    subscriber.close()
    publisher.stop(5)


def published_frames(subscriber: Subscriber, count: int) -> list[int]:
    frames = []
    for _ in range(count):
        message = subscriber.recv(timeout=10)
        assert message is not None, f"only {len(frames)} of {count} results arrived"
        frames.append(message.payload["frame"])
    assert subscriber.recv(timeout=0) is None, "more results than frames processed"
    return frames


def run_lane(config: TaskConfig, engine: OnnxRuntimeEngine, camera: object, publisher: Publisher,
             feed: Callable[[Lane], None] = lambda lane: None) -> Lane:
    """Start a lane, let `feed` drive its camera, wait until the lane has finished (end of stream)."""
    lane = Lane(config, build_task(config, engine), engine, camera, publisher)   # type: ignore[arg-type]
    lane.start()
    feed(lane)
    wait_for(lane.finished.is_set, 20, "the lane to finish at the end of the stream")
    assert lane.error is None
    return lane


def feed_frames(camera: Camera, frames: list[tuple[int, int]]) -> Callable[[Lane], None]:
    """Put (index, t_capture_ns) frames into the camera's real lossless slot, each after the lane read the
    one before (FrameSlot.put waits for that), then end the stream."""
    def feed(lane: Lane) -> None:
        stop = threading.Event()
        (index, t_ns), *rest = frames
        assert camera.slot.put(Frame(camera.id, index, t_ns, IMAGE), stop=stop)
        wait_for(lambda: lane.stats.captured == 1, 10, "the lane to read its first frame")   # its reader exists
        for index, t_ns in rest:
            assert camera.slot.put(Frame(camera.id, index, t_ns, IMAGE), stop=stop)
        camera.slot.close()
    return feed


def lossless_camera() -> Camera:
    """A real camera object (not started): the test puts frames into its slot itself."""
    return Camera("c", parse_uri("test://bars?size=64x48&realtime=0"), on_event=lambda name, details: None)


@pytest.mark.parametrize("indexes,dropped", [([0, 3, 4, 7], 4), ([2, 5, 6, 9], 4), ([0, 1, 2], 0)])
def test_dropped_camera_counts_the_frames_the_lane_never_saw(tmp_path: Path, results, indexes: list[int],
                                                              dropped: int) -> None:
    """Frames before the lane's first one are not drops; a jump from n to m drops m - n - 1."""
    publisher, subscriber = results
    camera = lossless_camera()
    with OnnxRuntimeEngine(tiny_yolo(tmp_path / "tiny.onnx"), threads=1) as engine:
        lane = run_lane(task_config(engine.path), engine, camera, publisher,
                        feed_frames(camera, [(i, 10**9 + i) for i in indexes]))
    assert (lane.stats.captured, lane.stats.processed, lane.stats.dropped_camera) == (len(indexes), len(indexes),
                                                                                      dropped)
    assert published_frames(subscriber, len(indexes)) == indexes


def test_rate_limit_skips_frames_closer_than_its_period(tmp_path: Path, results) -> None:
    """10 Hz over a 20 Hz camera: every other frame. A frame exactly one period after the last accepted
    one is accepted."""
    publisher, subscriber = results
    camera = lossless_camera()
    t0, step = 5 * 10**9, 50_000_000                        # 50 ms apart; the limit's period is 100 ms
    with OnnxRuntimeEngine(tiny_yolo(tmp_path / "tiny.onnx"), threads=1) as engine:
        lane = run_lane(task_config(engine.path, rate_limit_hz=10.0), engine, camera, publisher,
                        feed_frames(camera, [(i, t0 + i * step) for i in range(7)]))
    assert (lane.stats.captured, lane.stats.skipped_rate, lane.stats.processed) == (7, 3, 4)
    assert published_frames(subscriber, 4) == [0, 2, 4, 6]


def test_without_rate_limit_every_frame_is_processed(tmp_path: Path, results) -> None:
    publisher, subscriber = results
    camera = lossless_camera()
    with OnnxRuntimeEngine(tiny_yolo(tmp_path / "tiny.onnx"), threads=1) as engine:
        lane = run_lane(task_config(engine.path), engine, camera, publisher,
                        feed_frames(camera, [(i, 10**9 + i) for i in range(4)]))     # 1 ns apart
    assert lane.stats.skipped_rate == 0
    assert published_frames(subscriber, 4) == [0, 1, 2, 3]


class ReadyCamera:
    """Stands in for a fast camera: the next frame is always ready when the lane asks (frames 0..count-1,
    then the end of the stream), so the lane never has a reason to wait for the oldest result early."""

    id = "c"

    def __init__(self, count: int) -> None:
        self.count = count
        self.slot = self

    def register(self) -> int:
        return 1

    def unregister(self, reader: int) -> None:
        pass

    def get_after(self, reader: int, index: int, timeout: float) -> Frame:
        if index + 1 >= self.count:
            raise EndOfStream
        return Frame(self.id, index + 1, time.monotonic_ns(), IMAGE)


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

    def hold(self) -> None:
        with self.cond:
            if self.in_flight_at_first_wait is None:
                self.in_flight_at_first_wait = self.submitted - self.completed
                self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.released, timeout=10):
                raise EngineError("test: results were never released")
            self.completed += 1

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
        self._held.hold()
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

    def _create_slot_impl(self, name: str, depth: int) -> Slot:
        return _HeldSlot(self, name, depth)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_lane_keeps_k_frames_in_flight(tmp_path: Path, results, k: int) -> None:
    publisher, subscriber = results
    held = HeldResults()
    with HeldEngine(tiny_yolo(tmp_path / "tiny.onnx"), held) as engine:
        def first_wait_then_release(lane: Lane) -> None:
            with held.cond:
                assert held.cond.wait_for(lambda: held.in_flight_at_first_wait is not None, 10), "lane never waited"
            held.release()
        lane = run_lane(task_config(engine.path, in_flight=k), engine, ReadyCamera(6), publisher,
                        first_wait_then_release)
    assert held.in_flight_at_first_wait == k                  # K submitted before the first result was awaited
    assert held.most_in_flight == k                           # and never more
    assert lane.stats.processed == 6
    assert published_frames(subscriber, 6) == list(range(6))  # results in frame order
