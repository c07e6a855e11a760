"""A Lane per (task, camera): latest frame -> preprocess into the slot -> engine (K in flight)
-> postprocess -> publisher queue. While frame n runs, frame n+1 is preprocessed and submitted.

The engine is read from the task's runtime at each frame boundary, and each in-flight frame carries
the engine it was submitted to: after a precision switch the frames already in flight finish on the
old variant, the next frame runs on the new one, and every result names the variant that made it.

Here too is what every lane shares: CameraLane (what the service sees of a (task, camera) lane, and how a
result is handed to the publisher), its counters, the rate gate, and HostCopies (device frames copied to the host
for a slot that cannot read them in place). A task with `batch: true` runs one BatchedLane over all its cameras
instead (edge/pipeline/batched.py).
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.engines.base import Engine, Pending, Slot
from edge.errors import EdgeError
from edge.log import get_logger
from edge.pipeline.cameras import Camera, EndOfStream, Frame
from edge.wire import protocol
from edge.wire.protocol import det_topic
from edge.wire.publisher import Publisher

if TYPE_CHECKING:
    from edge.pipeline.runtime import TaskRuntime

log = get_logger("pipeline")
INFER_TIMEOUT_S = 30.0
IDLE_POLL_S = 0.1
FPS_WINDOW_S = 2.0          # fps in status and heartbeats: results published over the last 2 s


@dataclasses.dataclass
class LaneStats:
    """The counters a (task, camera) lane keeps itself, written by its thread; what the publisher counted of its
    results (published, dropped at the queue, latencies) is the lane's `sender`. Reading them changes nothing."""

    task: str
    camera: str
    captured: int = 0
    processed: int = 0
    dropped_camera: int = 0
    skipped_rate: int = 0


class RateGate:
    """The task's rate limit, then the supervisor's rate scale (1.0: every frame; 0.5: every other; 0: paused):
    asked once per frame of a lane, once per batch of a batched lane (at the batch's earliest capture time)."""

    def __init__(self, runtime: TaskRuntime) -> None:
        hz = runtime.config.rate_limit_hz
        self.runtime = runtime
        self._min_gap_ns = int(1e9 / hz) if hz > 0 else 0
        self._credit = 0.0                           # the supervisor's rate scale: frames owed
        self._last_ns: int | None = None             # none yet: CLOCK_MONOTONIC counts from boot, not from 0

    def accept(self, t_capture_ns: int) -> bool:
        if self._min_gap_ns and self._last_ns is not None and t_capture_ns - self._last_ns < self._min_gap_ns:
            return False
        self._credit = min(1.0, self._credit + self.runtime.rate_scale)
        if self._credit < 1.0 - 1e-9:
            return False
        self._credit -= 1.0
        self._last_ns = t_capture_ns
        return True


class CameraLane:
    """What the service sees of a (task, camera) lane: its name, det topic, counters and status; and how a result
    of the camera's frame is published: handed to the publisher through the lane's `sender`, whose counters the
    publisher keeps. Subclasses provide `engine`, `finished` and `error`."""

    engine: Engine | None
    finished: threading.Event
    error: EdgeError | None
    slots: dict[Engine, Slot]           # the lane's slot on each variant it ran

    def __init__(self, runtime: TaskRuntime, camera: Camera, publisher: Publisher, *, include_labels: bool) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.camera = camera
        self.include_labels = include_labels
        self.name = f"{self.config.name}.{camera.id}"
        self.topic = det_topic(self.config.name, camera.id)
        self.stats = LaneStats(self.config.name, camera.id)
        self.sender = publisher.sender(self.topic)

    def publish(self, frame: Frame, engine: Engine, detections: Any) -> None:
        self.stats.processed += 1
        w, h = frame.size
        message = protocol.det_message(
            task=self.config.name, camera=self.camera.id, frame=frame.index, t_capture_ns=frame.t_capture_ns,
            precision=engine.precision, engine=engine.name, size=(w, h), detections=detections,
            labels=self.runtime.task.labels if self.include_labels else None)
        self.sender.publish(message)

    def status(self, now_ns: int | None = None) -> dict[str, Any]:
        """A snapshot of this lane (nothing is reset by reading it)."""
        s, sent = self.stats, self.sender
        engine = self.engine or self.runtime.active()
        slot = self.slots.get(engine)
        fps = sent.rate(now_ns or time.monotonic_ns(), FPS_WINDOW_S)
        return {"task": s.task, "camera": s.camera, "fps": round(fps, 2),
                "latency_ms_p50": _round(sent.latency_ms(0.5)), "latency_ms_p99": _round(sent.latency_ms(0.99)),
                "captured": s.captured, "processed": s.processed, "published": sent.published,
                "dropped_camera": s.dropped_camera, "dropped_publisher": sent.dropped,
                "skipped_rate": s.skipped_rate, "precision": engine.precision, "engine": engine.name,
                "running": not self.finished.is_set(), "graphs": None if slot is None else slot.graph_status}


class HostCopies:
    """A lane's host images of its frames, for a slot that cannot read device frames in place: each device frame
    copied to the host and released (warned of once per lane: a copy and a colour conversion on the CPU)."""

    def __init__(self, lane: str) -> None:
        self.lane = lane
        self._warned = False

    def images(self, frames: list[Frame], slot: Slot, why: str) -> list[np.ndarray]:
        """The frames' images, host frames as they are; `why` says why the slot's copies are needed."""
        devices = [frame for frame in frames if frame.device is not None]
        if devices and not self._warned:
            self._warned = True
            log.warning("%s: device frames are copied to the host for %s, as %s (costly: a copy and a colour"
                        " conversion on the CPU per frame)", self.lane, slot.engine.name, why)
        try:
            return [frame.image if frame.device is None else frame.device.download_bgr() for frame in frames]
        finally:
            for frame in devices:
                frame.release()


@dataclasses.dataclass
class _InFlight:
    frame: Frame
    meta: Any
    engine: Engine
    pending: Pending


class Lane(CameraLane):
    def __init__(self, runtime: TaskRuntime, camera: Camera, publisher: Publisher, *,
                 max_frames: int | None = None, include_labels: bool = False) -> None:
        super().__init__(runtime, camera, publisher, include_labels=include_labels)
        self.max_frames = max_frames
        self.engine: Engine | None = None           # the variant of the last frame submitted
        self.error: EdgeError | None = None
        self.finished = threading.Event()
        self.slots: dict[Engine, Slot] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.name}", daemon=True)
        self._gate = RateGate(runtime)
        self._host = HostCopies(self.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        return joined(self._thread, timeout, self.name)

    def _run(self) -> None:
        reader = self.camera.latest.register()
        slots = self.slots
        inflight: collections.deque[_InFlight] = collections.deque()
        try:
            self.error = ended_by(self.name, lambda: self._loop(reader, slots, inflight))
        finally:
            self.camera.latest.unregister(reader)
            for slot in slots.values():
                slot.close()
            self.finished.set()

    def _slot(self, slots: dict[Engine, Slot], engine: Engine) -> Slot:
        """This lane's slot on `engine`, made the first time the lane runs that variant."""
        slot = slots.get(engine)
        if slot is None:
            slot = slots[engine] = engine.create_slot(self.name, depth=self.config.in_flight)
        return slot

    def _loop(self, reader: int, slots: dict[Engine, Slot], inflight: collections.deque[_InFlight]) -> None:
        last_index, submitted = -1, 0
        ended = False
        while not self._stop.is_set():
            want_more = not ended and (self.max_frames is None or submitted < self.max_frames)
            if want_more and len(inflight) < self.config.in_flight:
                try:
                    frame = self.camera.latest.get_after(reader, last_index, 0.0 if inflight else IDLE_POLL_S)
                except EndOfStream:
                    ended, frame = True, None
                if frame is not None:
                    if last_index >= 0:
                        self.stats.dropped_camera += frame.index - last_index - 1
                    last_index = frame.index
                    self.stats.captured += 1
                    if not self._gate.accept(frame.t_capture_ns):
                        self.stats.skipped_rate += 1
                        frame.release()
                        continue
                    self._submit(frame, slots, inflight)
                    submitted += 1
                    continue
            if inflight:
                self._finish(inflight.popleft())
            elif not want_more:
                return

    def _submit(self, frame: Frame, slots: dict[Engine, Slot], inflight: collections.deque[_InFlight]) -> None:
        """The frame boundary: the frame runs on the variant active now. At most `in_flight` frames are in
        flight over all of the lane's slots, so the slot of a new variant always has a free buffer. A device
        frame goes to a slot that reads it in place (which releases it), else to the host first. A slot that
        takes raw frames (TensorRT: the letterbox on the GPU, bit-identical to the task's CPU letterbox) gets
        the frame itself; otherwise the task preprocesses into the slot's input buffer."""
        engine = self.runtime.active()
        try:
            slot = self._slot(slots, engine)
        except BaseException:
            frame.release()
            raise
        if frame.device is not None and slot.takes_device_frames:
            pending, meta = slot.submit_device_frame(frame.device)
        else:
            image = self._host.images([frame], slot, slot.device_frames_refused)[0]
            if slot.takes_frames:
                pending, meta = slot.submit_frame(image)
            else:
                buf = slot.input()
                meta = self.runtime.task.preprocess(image, buf)
                pending = slot.submit(buf)
        inflight.append(_InFlight(frame, meta, engine, pending))
        self.engine = engine

    def _finish(self, item: _InFlight) -> None:
        outputs = item.pending.wait(INFER_TIMEOUT_S, copy=False)    # decoded before the slot reuses them
        self.publish(item.frame, item.engine, self.runtime.task.postprocess(outputs, item.meta))


def ended_by(name: str, loop: Callable[[], None]) -> EdgeError | None:
    """Run a lane's loop: None when it returns, else the error that ended it, logged. A bug ends the lane with an
    EdgeError too, so the service exits 1 and systemd restarts it, rather than leaving a silent dead lane."""
    try:
        loop()
    except EdgeError as exc:
        log.error("%s failed: %s", name, exc)
        return exc
    except Exception as exc:
        log.exception("%s crashed", name)
        return EdgeError(f"lane {name} crashed: {exc!r}")
    return None


def joined(thread: threading.Thread, timeout: float, name: str) -> bool:
    """Wait up to `timeout` for a lane's thread (one never started has nothing to wait for); False, and a warning,
    when it still runs."""
    if thread.ident is not None:
        thread.join(timeout)
    if thread.is_alive():
        log.warning("%s did not stop within %.1f s", name, timeout)
        return False
    return True


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
