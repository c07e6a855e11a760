"""Batching across cameras (`batch: true`) on the CPU tier: real ONNX Runtime sessions of batch-capable
models (tests/support/models.py set_batch), real cameras' LatestFrames, a real publisher and subscriber.

A batched lane gathers one frame per camera into one execution and publishes each camera's result on its
own topic: every frame of every camera once, in order, `seq` contiguous, the detections of the unbatched
lane; a camera that ends or is lost does not stall the others; precision switches at batch boundaries;
the rate scale; K batches in flight; a model that cannot batch is refused at start. The TensorRT side is
in the contract tests at the end (tests/support/fake_tensorrt.py on the CUDA stand-in)."""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config.loader import parse_config
from edge.config.schema import TaskConfig
from edge.daemon.service import Service
from edge.engines.base import BatchSizes, Pending, Slot, WaitTimeout
from edge.engines.factory import Variants
from edge.engines.onnxruntime import OnnxRuntimeEngine, OrtSlot
from edge.errors import EngineError, UsageError
from edge.pipeline.batched import BatchedLane
from edge.pipeline.cameras import Camera, Frame
from edge.pipeline.runtime import TaskRuntime
from edge.tasks import build_task
from edge.wire import protocol
from edge.wire.client import Message, Subscriber
from edge.wire.publisher import Publisher
from tests.conftest import PEER_S, wait_for
from tests.support.lanes import YOLO, lossless_camera, published
from tests.support.models import conv_model, set_batch

SIZES = {"c0": (64, 48), "c1": (96, 64), "c2": (48, 80)}          # (w, h): each camera its own letterbox


def yolo_model(path: Path, *, batch: int | None = None, weight: float = 1.0) -> Path:
    """The detector's input and one YOLO head, [B,3,64,64] -> [B,21,2,2]; B symbolic (None) or fixed. Every
    head value is `weight` x (R+G+B) of one letterboxed pixel, so the detections follow the image."""
    conv_model(path, input_shape=[batch or 1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=YOLO, weight=weight)
    return set_batch(path, batch)


def image(camera: str, index: int) -> np.ndarray:
    w, h = SIZES[camera]
    return np.random.default_rng([int(camera[1:]), index]).integers(0, 256, (h, w, 3), np.uint8)


# Capture times one second apart: a batch waits half a frame interval for the other cameras' frames, and the feed
# threads of a test must make that on a loaded 2-core machine (at 33 ms apart, 16 ms was missed under load).
FRAME_GAP_NS = 1_000_000_000


def frame(camera: str, index: int) -> Frame:
    return Frame(camera, index, 10**9 + index * FRAME_GAP_NS, image(camera, index))


def task_config(model: Path, cameras: list[str], **fields: object) -> TaskConfig:
    return TaskConfig(name="objects", type="detector", model=str(model), cameras=cameras, **{"batch": True, **fields})


def runtime_of(config: TaskConfig, *engines: OnnxRuntimeEngine) -> TaskRuntime:
    runtime = TaskRuntime(config, Variants({e.precision: e for e in engines}, {}), lambda *_: None)
    runtime.load()
    return runtime


def feed(camera: Camera, indexes: list[int], *, end: bool = True) -> threading.Thread:
    """Put the camera's frames into its LatestFrame (each after every reader saw the one before), then end it."""
    def run() -> None:
        stop = threading.Event()
        for index in indexes:
            assert camera.latest.put(frame(camera.id, index), stop=stop)
        if end:
            camera.latest.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def by_camera(messages: list[Message]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for message in messages:
        assert message.topic == f"det.objects.{message.payload['camera']}"
        out[message.payload["camera"]].append(message.payload)
    return dict(out)


def unbatched_rows(engine: OnnxRuntimeEngine, config: TaskConfig, camera: str, index: int) -> list[list[float]]:
    """What an unbatched lane publishes for this frame: the task's own preprocessing and postprocessing of one
    image on a plain slot, rounded as det messages are."""
    task = build_task(config.model_copy(update={"batch": False}), engine)
    slot = engine.create_slot("unbatched", depth=1)
    try:
        buf = slot.input()
        meta = task.preprocess(image(camera, index), buf)
        detections = task.postprocess(slot.submit(buf).wait(), meta)
    finally:
        slot.close()
    return protocol.det_message(task="t", camera=camera, frame=index, t_capture_ns=0, precision="fp32", engine="e",
                                size=(1, 1), detections=detections)["detections"]


def run_batched(runtime: TaskRuntime, cameras: list[Camera], publisher: Publisher,
                drive: Callable[[BatchedLane], None], **options: Any) -> BatchedLane:
    """Start a batched lane, let `drive` feed its cameras, wait until it has finished."""
    lane = BatchedLane(runtime, cameras, publisher, **options)
    lane.start()
    drive(lane)
    wait_for(lane.finished.is_set, 20, "the batched lane to finish")
    assert lane.error is None
    wait_for(lambda: all(m.sender.published == m.stats.processed for m in lane.members), 10, "the publisher")
    return lane


@pytest.fixture
def dynamic(tmp_path: Path) -> Iterator[OnnxRuntimeEngine]:
    with OnnxRuntimeEngine(yolo_model(tmp_path / "dyn.onnx"), threads=1) as engine:
        yield engine


# ----------------------------------------------------------------------------- the engine and the task


def test_onnx_runtime_reads_the_batch_sizes_of_the_model(tmp_path: Path) -> None:
    cases = {None: BatchSizes(1, None), 1: BatchSizes(1, 1), 3: BatchSizes(3, 3)}
    for batch, sizes in cases.items():
        with OnnxRuntimeEngine(yolo_model(tmp_path / f"m{batch}.onnx", batch=batch)) as engine:
            assert engine.batch_sizes == sizes
            assert engine.inputs[0].shape == (batch or 1, 3, 64, 64)       # a plain slot runs batch 1 (or N)
            assert engine.outputs[0].shape == (batch or 1, 21, 2, 2)
    assert str(BatchSizes(1, None)) == "batches of 1 or more" and str(BatchSizes(3, 3)) == "a fixed batch of 3"
    assert str(BatchSizes(1, 8)) == "batches of 1 to 8"


def test_a_batched_slot_runs_the_rows_it_is_given(dynamic: OnnxRuntimeEngine, tmp_path: Path) -> None:
    slot = dynamic.create_slot("batch", depth=2, batch=3)
    assert (slot.batch, slot.rows) == (3, 3)
    buf = slot.input()
    assert buf.shape == (3, 3, 64, 64)
    buf[0], buf[1] = 0.25, 0.5
    outputs = slot.submit(buf, count=2).wait()
    assert outputs["out0"].shape == (2, 21, 2, 2)
    assert np.allclose(outputs["out0"][0], 0.75) and np.allclose(outputs["out0"][1], 1.5)   # weight 1 x (R+G+B)
    assert slot.submit(slot.input()).wait()["out0"].shape == (3, 21, 2, 2)                  # default: the batch
    with pytest.raises(UsageError, match="count must be 1 to 3, got 4"):
        slot.submit(slot.input(), count=4)
    plain = dynamic.create_slot("plain", depth=1)
    assert plain.input().shape == (1, 3, 64, 64) and plain.rows is None
    with pytest.raises(UsageError, match="is not batched: submit\\(\\) takes no count"):
        plain.submit(plain.input(), count=1)
    with pytest.raises(UsageError, match="does not take batches of raw frames"):
        slot.submit_frames([image("c0", 0)])
    with OnnxRuntimeEngine(yolo_model(tmp_path / "fixed.onnx", batch=3)) as fixed:
        padded = fixed.create_slot("batch", depth=1, batch=2)          # a fixed batch of 3 runs 3 rows
        assert padded.rows == 3 and padded.submit(padded.input(), count=1).wait()["out0"].shape == (1, 21, 2, 2)


def test_an_engine_refuses_a_batch_it_cannot_run(tmp_path: Path) -> None:
    with OnnxRuntimeEngine(yolo_model(tmp_path / "one.onnx", batch=1)) as engine:
        with pytest.raises(EngineError) as info:
            engine.create_slot("batch", batch=2)
    message = str(info.value)
    assert "slot 'batch': 2 images in one execution, and one.onnx:onnxruntime:fp32 runs a fixed batch of 1" in message
    assert "Note: input images [1, 3, 64, 64]" in message
    assert "Hint: export the ONNX model with a dynamic batch dimension" in message and "fixed batch of 2" in message


def test_the_detectors_batch_methods_give_each_image_its_own_result(dynamic: OnnxRuntimeEngine) -> None:
    config = task_config(dynamic.path, ["c0", "c1", "c2"])
    task = build_task(config, dynamic)
    images = [image(c, 5) for c in SIZES]
    slot = dynamic.create_slot("batch", depth=1, batch=3)
    buf = slot.input()
    metas = task.preprocess_batch(images, buf)
    results = task.postprocess_batch(slot.submit(buf).wait(), metas)
    assert [m.src_width for m in metas] == [64, 96, 48]
    assert any(len(r) for r in results)
    for camera, rows in zip(SIZES, results):
        assert protocol.det_message(task="t", camera=camera, frame=5, t_capture_ns=0, precision="fp32", engine="e",
                                    size=(1, 1), detections=rows)["detections"] == unbatched_rows(dynamic, config,
                                                                                                   camera, 5)


def test_the_detector_takes_a_batch_only_on_a_batched_task(tmp_path: Path) -> None:
    with OnnxRuntimeEngine(yolo_model(tmp_path / "four.onnx", batch=4)) as engine:
        assert build_task(task_config(engine.path, ["c0"]), engine).input_shape == (4, 3, 64, 64)
        with pytest.raises(EngineError, match="the detector needs float32 \\[1, 3, H, W\\]") as info:
            build_task(task_config(engine.path, ["c0"], batch=False), engine)
    assert "runs on a task of N cameras with batch: true" in str(info.value)


# ----------------------------------------------------------------------------- the batched lane


def test_every_frame_of_every_camera_is_published_once_in_order_with_the_unbatched_detections(
        dynamic: OnnxRuntimeEngine, results) -> None:
    publisher, subscriber = results
    config = task_config(dynamic.path, ["c0", "c1", "c2"])
    cameras = [lossless_camera(c) for c in ("c0", "c1", "c2")]
    lane = run_batched(runtime_of(config, dynamic), cameras, publisher,
                       lambda lane: [feed(camera, list(range(6))) for camera in cameras])
    assert lane.name == "objects.c0+c1+c2" and [m.name for m in lane.members] == ["objects.c0", "objects.c1",
                                                                                  "objects.c2"]
    payloads = by_camera(published(subscriber, 18))
    for member in lane.members:
        camera = member.camera.id
        assert [p["frame"] for p in payloads[camera]] == list(range(6))
        assert [p["seq"] for p in payloads[camera]] == list(range(6))
        assert [p["size"] for p in payloads[camera]] == [list(SIZES[camera])] * 6
        assert [p["detections"] for p in payloads[camera]] == [unbatched_rows(dynamic, config, camera, i)
                                                              for i in range(6)]
        assert (member.stats.captured, member.stats.processed, member.stats.dropped_camera) == (6, 6, 0)
    assert any(p["detections"] for ps in payloads.values() for p in ps)


def test_a_camera_that_ends_does_not_stall_the_others(dynamic: OnnxRuntimeEngine, results) -> None:
    publisher, subscriber = results
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    run_batched(runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic), cameras, publisher,
                lambda lane: (feed(cameras[0], [0, 1]), feed(cameras[1], list(range(8)))))
    payloads = by_camera(published(subscriber, 10))
    assert [p["frame"] for p in payloads["c0"]] == [0, 1]
    assert [p["frame"] for p in payloads["c1"]] == list(range(8))


def test_a_lost_camera_does_not_stall_the_others(dynamic: OnnxRuntimeEngine, results) -> None:
    """c1 gives no frame and does not end (a live camera reconnecting): c0's frames run without it, each after
    the gather wait at most, and c1 gets no message, not a duplicate."""
    publisher, subscriber = results
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    lane = BatchedLane(runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic), cameras, publisher)
    lane.start()
    try:
        feed(cameras[0], list(range(5)), end=False)
        assert [p["frame"] for p in by_camera(published(subscriber, 5))["c0"]] == list(range(5))
        lost = lane.members[1]
        assert (lost.stats.captured, lost.stats.processed, lost.status()["running"]) == (0, 0, True)
    finally:
        assert lane.stop(5)
    assert lane.error is None


def test_the_gather_rule(dynamic: OnnxRuntimeEngine, results, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is ready when every awaited camera has a frame, or half a frame interval after its first frame
    arrived; an ended camera, or one silent for ABSENT_INTERVALS of its intervals, is not awaited."""
    from edge.pipeline import batched

    now = [10**12]
    monkeypatch.setattr(batched.time, "monotonic_ns", lambda: now[0])
    cameras = [lossless_camera(c) for c in ("c0", "c1", "c2")]
    lane = BatchedLane(runtime_of(task_config(dynamic.path, ["c0", "c1", "c2"]), dynamic), cameras, results[0])
    feeds = [m.feed for m in lane.members]
    for f in feeds:
        f.seen_ns, f.interval_ns = now[0], 40_000_000                   # 25 fps cameras, all just seen
    assert lane._state(now[0]) == (False, None)                        # nothing arrived: no batch open
    feeds[0].frame, feeds[0].arrived_ns = frame("c0", 0), now[0]
    feeds[1].interval_ns = 20_000_000                                   # the fastest camera: 50 fps
    assert lane._state(now[0]) == (False, now[0] + 10_000_000)         # half of its interval after the first
    assert lane._state(now[0] + 10_000_000) == (True, now[0] + 10_000_000)
    feeds[1].frame, feeds[1].arrived_ns, feeds[2].frame = frame("c1", 0), now[0] + 1, frame("c2", 0)
    assert lane._state(now[0]) == (True, None)                         # all there: at once
    feeds[2].frame, feeds[2].ended = None, True
    assert lane._state(now[0]) == (True, None)                         # an ended camera is not awaited
    feeds[2].ended, feeds[2].seen_ns = False, now[0] - 3 * 40_000_000 - 1
    assert lane._state(now[0]) == (True, None)                         # nor one silent for 3 intervals
    feeds[2].seen_ns += 1
    assert lane._state(now[0])[0] is False
    lane.members[2].done = True                                        # nor one that ran its max_frames
    assert lane._state(now[0]) == (True, None)


def test_a_precision_switch_takes_effect_at_a_batch_boundary(tmp_path: Path, results) -> None:
    publisher, subscriber = results
    fp32 = OnnxRuntimeEngine(yolo_model(tmp_path / "a.onnx"), threads=1).activate()
    int8 = OnnxRuntimeEngine(yolo_model(tmp_path / "b.onnx", weight=0.5), precision="int8", threads=1).activate()
    config = task_config(fp32.path, ["c0", "c1"])
    runtime = runtime_of(config, fp32, int8)
    cameras = [lossless_camera(c) for c in ("c0", "c1")]

    def drive(lane: BatchedLane) -> None:
        feeds = [feed(camera, [0], end=False) for camera in cameras]
        first = published(subscriber, 2)
        assert {m.payload["precision"] for m in first} == {"fp32"}
        for thread in feeds:
            thread.join(10)
        runtime.choose("int8", "test")
        for camera in cameras:
            feed(camera, [1, 2, 3])
    run_batched(runtime, cameras, publisher, drive)
    payloads = by_camera(published(subscriber, 6))
    for camera in ("c0", "c1"):
        assert [(p["frame"], p["precision"]) for p in payloads[camera]] == [(1, "int8"), (2, "int8"), (3, "int8")]
        assert [p["detections"] for p in payloads[camera]] == [unbatched_rows(int8, config, camera, i)
                                                              for i in (1, 2, 3)]
        assert payloads[camera][0]["engine"] == int8.name
    assert unbatched_rows(int8, config, "c0", 1) != unbatched_rows(fp32, config, "c0", 1)
    fp32.deactivate()
    int8.deactivate()


@pytest.mark.parametrize("scale,kept", [(1.0, 4), (0.5, 2), (0.0, 0)])
def test_the_rate_scale_applies_to_whole_batches(dynamic: OnnxRuntimeEngine, results, scale: float,
                                                 kept: int) -> None:
    publisher, subscriber = results
    runtime = runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic)
    runtime.rate_scale = scale
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    lane = run_batched(runtime, cameras, publisher, lambda lane: [feed(camera, [0, 1, 2, 3]) for camera in cameras])
    payloads = by_camera(published(subscriber, 2 * kept))
    assert sorted(payloads) == (["c0", "c1"] if kept else [])
    assert all([p["frame"] for p in payloads[c]] == [p["frame"] for p in payloads["c0"]] for c in payloads)
    assert [(m.stats.captured, m.stats.skipped_rate) for m in lane.members] == [(4, 4 - kept)] * 2


def test_max_frames_ends_the_batched_lane(dynamic: OnnxRuntimeEngine, results) -> None:
    publisher, subscriber = results
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    run_batched(runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic), cameras, publisher,
                lambda lane: [feed(camera, list(range(10)), end=False) for camera in cameras], max_frames=3)
    payloads = by_camera(published(subscriber, 6))
    assert [p["frame"] for p in payloads["c0"]] == [p["frame"] for p in payloads["c1"]] == [0, 1, 2]


class _HeldPending(Pending):
    def __init__(self, inner: Pending, gate: threading.Event, waits: list[int], slot: Slot) -> None:
        super().__init__(lambda: None)                  # the inner pending frees the slot's buffer
        self._inner, self._gate, self._waits, self._slot = inner, gate, waits, slot

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        self._waits.append(self._slot.in_flight())
        if not self._gate.wait(10 if timeout is None else timeout):
            raise WaitTimeout(f"held: inference did not finish within {timeout} s")
        return self._inner.wait(timeout)


class _HeldSlot(OrtSlot):
    engine: HeldEngine

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        return _HeldPending(super()._submit_impl(index, release), self.engine.gate, self.engine.waits, self)


class HeldEngine(OnnxRuntimeEngine):
    """Real inference, every result held back until `gate` opens (GPU work still running); `waits` records how
    many batches were in flight each time the lane waited for one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, threads=1)
        self.gate = threading.Event()
        self.waits: list[int] = []

    def _create_batch_slot_impl(self, name: str, depth: int, batch: int) -> Slot:
        return _HeldSlot(self, name, depth, batch)


def cameras_keep_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cameras faster than the engine: after each batch goes in flight, every feed holds its next frame (or its
    camera has ended) before the lane looks for the next batch."""
    submit = BatchedLane._submit

    def submit_then_catch_up(self: BatchedLane, *args: Any) -> None:
        submit(self, *args)
        wait_for(lambda: all(m.feed.frame is not None or m.feed.ended for m in self.members), 10, "next frames")
    monkeypatch.setattr(BatchedLane, "_submit", submit_then_catch_up)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_batches_in_flight(tmp_path: Path, results, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    publisher, subscriber = results
    cameras_keep_up(monkeypatch)
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    with HeldEngine(yolo_model(tmp_path / "dyn.onnx")) as engine:
        def drive(lane: BatchedLane) -> None:
            for camera in cameras:
                feed(camera, list(range(6)))
            wait_for(lambda: engine.waits, 10, "the lane to wait for its first batch")
            engine.gate.set()
        lane = run_batched(runtime_of(task_config(engine.path, ["c0", "c1"], in_flight=k), engine), cameras,
                           publisher, drive)
        assert engine.waits[0] == k and max(engine.waits) == k        # K batches in flight, never more
    assert [m.stats.processed for m in lane.members] == [6, 6]
    payloads = by_camera(published(subscriber, 12))
    assert [p["frame"] for p in payloads["c0"]] == [p["frame"] for p in payloads["c1"]] == list(range(6))


def test_a_batch_goes_in_flight_when_due_while_the_oldest_runs(tmp_path: Path, results) -> None:
    """c1 is late: the batch of c0's frame 1 does not wait for the running batch to finish, only its gather wait."""
    publisher, subscriber = results
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    with HeldEngine(yolo_model(tmp_path / "dyn.onnx")) as engine:
        lane = BatchedLane(runtime_of(task_config(engine.path, ["c0", "c1"]), engine), cameras, publisher)
        lane.start()
        try:
            feed(cameras[0], [0, 1], end=False)
            feed(cameras[1], [0], end=False)
            wait_for(lambda: lane.members[0].stats.captured == 2, 10, "c0's frame 1 to go in flight")
            wait_for(lambda: engine.waits[-1] == 2, 10, "the lane to wait with both batches in flight")
            assert lane.members[1].stats.captured == 1 and lane.members[0].stats.processed == 0
            engine.gate.set()
            payloads = by_camera(published(subscriber, 3))
        finally:
            assert lane.stop(5)
    assert [p["frame"] for p in payloads["c0"]] == [0, 1] and [p["frame"] for p in payloads["c1"]] == [0]


def test_stop_is_bounded_while_gathering(dynamic: OnnxRuntimeEngine, results) -> None:
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    lane = BatchedLane(runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic), cameras, results[0])
    lane.start()
    feed(cameras[0], [0], end=False)
    wait_for(lambda: lane.members[0].stats.processed == 1, 10, "c0's frame to run without c1")
    assert lane.stop(2) is True and lane.finished.is_set() and lane.error is None
    assert all(not m.feed._thread.is_alive() for m in lane.members)   # the feeds ended with the lane
    assert [len(c.latest._readers) for c in cameras] == [0, 0]           # and gave back their readers


def test_a_failing_feed_fails_the_lane(dynamic: OnnxRuntimeEngine, results, monkeypatch: pytest.MonkeyPatch) -> None:
    cameras = [lossless_camera(c) for c in ("c0", "c1")]
    monkeypatch.setattr(cameras[1].latest, "get_after", lambda *args: 1 / 0)
    lane = BatchedLane(runtime_of(task_config(dynamic.path, ["c0", "c1"]), dynamic), cameras, results[0])
    lane.start()
    wait_for(lane.finished.is_set, 10, "the lane to fail")
    assert "the feed of camera c1 crashed: ZeroDivisionError" in str(lane.error)
    assert all(m.error is lane.error for m in lane.members)


# ----------------------------------------------------------------------------- the daemon


def daemon_config(tmp_path: Path, model: Path, *, batch: bool, frames: int = 8):
    cams = "".join(f"  - id: {c}\n    uri: test://bars?size={w}x{h}&realtime=0&frames={frames}\n"
                   for c, (w, h) in SIZES.items())
    text = (f"version: 1\ncameras:\n{cams}tasks:\n  - name: objects\n    type: detector\n    model: {model}\n"
            f"    backend: onnxruntime\n    cameras: [c0, c1, c2]\n    batch: {str(batch).lower()}\n"
            f"output:\n  results: ipc://{tmp_path}/r.sock\ncontrol:\n  endpoint: ipc://{tmp_path}/c.sock\n")
    return parse_config(text, source="test", base_dir=tmp_path, environ={})


def run_daemon(tmp_path: Path, model: Path, *, batch: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict]]:
    """The daemon on three test:// cameras of 8 frames: what a subscriber got, and the heartbeat's lanes."""
    config = daemon_config(tmp_path, model, batch=batch)
    subscriber = Subscriber(config.output.results, topics=["det."])
    service = Service(config, wait_subscriber_s=PEER_S)
    service.start()
    try:
        assert service.run(threading.Event()) == 0
        wait_for(lambda: all(lane.sender.published == lane.stats.processed for lane in service.lanes), 10, "publish")
        lanes = service.status()["lanes"]
        payloads = by_camera(published(subscriber, 24))
    finally:
        service.stop()
        subscriber.close()
    return payloads, lanes


def test_the_daemon_publishes_the_same_with_and_without_batching(tmp_path: Path) -> None:
    """Subscribers see no difference: the same topics, frames, seq, sizes and detections; heartbeat lanes with
    the same names and keys."""
    model = yolo_model(tmp_path / "dyn.onnx")
    batched, batched_lanes = run_daemon(tmp_path, model, batch=True)
    plain, plain_lanes = run_daemon(tmp_path, model, batch=False)
    fields = ("camera", "frame", "seq", "size", "detections", "precision", "engine")
    for camera in SIZES:
        assert [p["frame"] for p in batched[camera]] == list(range(8))
        assert [[p[f] for f in fields] for p in batched[camera]] == [[p[f] for f in fields] for p in plain[camera]]
    assert any(p["detections"] for p in batched["c0"])
    assert [sorted(lane) for lane in batched_lanes] == [sorted(lane) for lane in plain_lanes]
    assert [(lane["task"], lane["camera"], lane["processed"]) for lane in batched_lanes] == [
        ("objects", c, 8) for c in SIZES]


def test_the_daemon_refuses_a_model_that_cannot_batch(tmp_path: Path) -> None:
    service = Service(daemon_config(tmp_path, yolo_model(tmp_path / "one.onnx", batch=1), batch=True))
    with pytest.raises(EngineError) as info:
        service.start()
    message = str(info.value)
    assert message.startswith("task objects: batch: true over 3 cameras: 3 images in one execution, and one.onnx")
    assert "runs a fixed batch of 1\nNote: input images [1, 3, 64, 64] of " in message
    assert "Hint: export the ONNX model with a dynamic batch dimension" in message
    assert message.endswith("or with a fixed batch of 3; or set batch: false (a lane per camera)")
    assert service.cameras.open == {} and service.tasks == {}           # refused before a camera was acquired


# ----------------------------------------------------------------------------- TensorRT (stand-ins)


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stand-in TensorRT on the CUDA stand-in (tests/support/fake_tensorrt.py, tests/support/fake_cuda.py)."""
    import sys

    from tests.support import fake_cuda, fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("edge.engines.repository.read_board", lambda root=Path("/"): fake_tensorrt.BOARD)
    monkeypatch.setattr("edge.engines.repository.read_l4t", lambda root=Path("/"): "36.4.3")
    return fake_cuda.install(monkeypatch)


def identity_plan(tmp_path: Path, *, batch: int | None, shapes: list[str] | None = None) -> Path:
    """A plan whose stand-in network returns its input: images [B,3,8,8] -> Identity -> out0 (B fixed or dynamic,
    built with `shapes`)."""
    import onnx
    from onnx import TensorProto, helper

    from edge.engines.tensorrt import build

    shape = [batch or 1, 3, 8, 8]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out0"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out0", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / f"identity{batch}.onnx"
    onnx.save(model, str(path))
    return build.build(set_batch(path, batch), shapes=shapes, say=lambda line: None).plan


DYNAMIC = ["images:1x3x8x8,2x3x8x8,4x3x8x8"]


def test_a_dynamic_plan_runs_the_batches_its_profile_allows(trt, tmp_path: Path) -> None:
    from edge.engines.tensorrt.engine import TensorRTEngine

    with TensorRTEngine(identity_plan(tmp_path, batch=None, shapes=DYNAMIC)) as engine:
        assert engine.batch_sizes == BatchSizes(1, 4) and engine.inputs[0].shape == (2, 3, 8, 8)   # built at opt
        slot = engine.create_slot("cams", depth=2, batch=3)
        assert slot.rows == 3 and slot.execution.input_shapes["images"] == (3, 3, 8, 8)
        shapes = []
        slot.execution.set_input_shape = lambda name, shape, real=slot.execution.set_input_shape: (
            shapes.append(shape), real(name, shape))[1]
        for count in (2, 2, 3, 1):
            buf = slot.input()
            buf[...] = np.arange(3, dtype=np.float32)[:, None, None, None] + 10 * count
            out = slot.submit(buf, count=count).wait(0)["out0"]
            assert out.shape == (count, 3, 8, 8) and np.array_equal(out, buf[:count])
        assert shapes == [(2, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]      # set only when the batch changes
        with pytest.raises(EngineError) as info:
            engine.create_slot("more", batch=5)
    message = str(info.value)
    assert message.startswith("slot 'more': 5 images in one execution, and identityNone.")
    assert ".plan:tensorrt:fp32 runs batches of 1 to 4\nNote: input images [2, 3, 8, 8] of " in message
    assert "Hint: build the plan from an ONNX model with a dynamic batch dimension, with a profile that reaches" \
           " batch 5: edge build model.onnx --shapes images:1x3x416x416,4x3x416x416,8x3x416x416" in message


def test_a_static_plan_runs_its_own_batch(trt, tmp_path: Path) -> None:
    from edge.engines.tensorrt.engine import TensorRTEngine

    with TensorRTEngine(identity_plan(tmp_path, batch=1)) as engine:
        assert engine.batch_sizes == BatchSizes(1, 1)
        with pytest.raises(EngineError, match="runs a fixed batch of 1"):
            engine.create_slot("cams", batch=2)
    with TensorRTEngine(identity_plan(tmp_path, batch=4)) as engine:
        assert engine.batch_sizes == BatchSizes(4, 4)
        slot = engine.create_slot("cams", batch=2)                     # padded to the plan's 4 images
        buf = slot.input()
        assert buf.shape == (4, 3, 8, 8)
        buf[...] = np.arange(4, dtype=np.float32)[:, None, None, None]
        assert np.array_equal(slot.submit(buf, count=1).wait(0)["out0"], buf[:1])


def test_a_batched_slot_letterboxes_each_frame_into_its_row(trt, tmp_path: Path) -> None:
    from edge.engines.base import LetterboxPreprocessing
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.letterbox import Letterbox

    engine = TensorRTEngine(identity_plan(tmp_path, batch=None, shapes=DYNAMIC),
                            preprocessing=LetterboxPreprocessing(fill=0.5)).activate()
    assert engine.takes_frames is False                                # its own input shape is a batch of 2
    slot = engine.create_slot("cams", depth=2, batch=3)
    assert slot.takes_frames is True and trt.kinds()["kernel"] == 2 * 3    # a GpuLetterbox per row in flight
    mark = len(trt.trace)
    images = [np.zeros((6, 10, 3), np.uint8), np.zeros((8, 4, 3), np.uint8)]
    pending, boxes = slot.submit_frames(images)
    assert boxes == [Letterbox.fit(10, 6, 8, 8), Letterbox.fit(4, 8, 8, 8)]
    rows = [entry[2] for entry in trt.trace[mark:] if entry[0] == "kernel"]
    base = slot.frames[0].device_input.pointer
    assert rows == [base, base + 3 * 8 * 8 * 4] and slot.execution.input_shapes["images"] == (2, 3, 8, 8)
    assert pending.wait(0)["out0"].shape == (2, 3, 8, 8)
    with pytest.raises(UsageError, match="count must be 1 to 3, got 4"):
        slot.submit_frames(images * 2)
    slot.close()
    engine.deactivate()
    assert trt.live == {}


def test_a_batched_tasks_cameras_count_as_one_lane_for_its_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.engines.factory import default_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    batched = TaskConfig(name="t", type="detector", model="m.onnx", cameras=["a", "b", "c"], batch=True)
    assert default_threads(batched, 3) == 4                             # one execution at a time: all cores
    assert default_threads(batched, 5) == 1                             # beside a task of two lanes: 4 // 3
    assert default_threads(batched.model_copy(update={"batch": False}), 3) == 1
