"""A Lane per (task, camera): latest frame -> preprocess into the slot -> engine (K in flight)
-> postprocess -> publisher queue. While frame n runs, frame n+1 is preprocessed and submitted.

The engine is read from the task's runtime at each frame boundary, and each in-flight frame carries
the engine it was submitted to: after a precision switch the frames already in flight finish on the
old variant, the next frame runs on the new one, and every result names the variant that made it.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from edge import protocol
from edge.backends.base import Engine, Pending, Slot
from edge.errors import EdgeError
from edge.log import get_logger
from edge.protocol import det_topic
from edge.publisher import Publisher
from edge.sources import Camera, EndOfStream, Frame

if TYPE_CHECKING:
    from edge.runtime import TaskRuntime

log = get_logger("pipeline")
INFER_TIMEOUT_S = 30.0
IDLE_POLL_S = 0.1
FPS_WINDOW_S = 2.0          # fps in status and heartbeats: results published over the last 2 s


@dataclasses.dataclass
class LaneStats:
    """Counters of one (task, camera) lane, written by the lane and (through `sent`/`dropped`, the
    publisher's Outcome) by the publisher thread. Reading them changes nothing."""

    task: str
    camera: str
    captured: int = 0
    processed: int = 0
    dropped_camera: int = 0
    skipped_rate: int = 0
    dropped_publisher: int = 0
    published: int = 0
    latencies_ns: collections.deque[int] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=2048))
    sent_ns: collections.deque[int] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=4096))

    def sent(self, payload: dict[str, Any], t_publish_ns: int) -> None:
        self.published += 1
        self.latencies_ns.append(t_publish_ns - payload["t_capture_ns"])
        self.sent_ns.append(t_publish_ns)

    def dropped(self) -> None:
        self.dropped_publisher += 1

    def latency_ms(self, quantile: float) -> float | None:
        values = sorted(self.latencies_ns.copy())  # copy() is atomic; the publisher appends concurrently
        if not values:
            return None
        return values[min(len(values) - 1, int(quantile * len(values)))] / 1e6

    def fps(self, now_ns: int) -> float:
        since = now_ns - int(FPS_WINDOW_S * 1e9)
        return sum(1 for t in self.sent_ns.copy() if t > since) / FPS_WINDOW_S


@dataclasses.dataclass
class _InFlight:
    frame: Frame
    meta: Any
    engine: Engine
    pending: Pending


class Lane:
    def __init__(self, runtime: TaskRuntime, camera: Camera, publisher: Publisher, *,
                 max_frames: int | None = None, include_labels: bool = False) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.camera = camera
        self.publisher = publisher
        self.max_frames = max_frames
        self.include_labels = include_labels
        self.name = f"{self.config.name}.{camera.id}"
        self.topic = det_topic(self.config.name, camera.id)
        self.stats = LaneStats(self.config.name, camera.id)
        self.engine: Engine | None = None           # the variant of the last frame submitted
        self.error: EdgeError | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.name}", daemon=True)
        self._min_gap_ns = int(1e9 / self.config.rate_limit_hz) if self.config.rate_limit_hz > 0 else 0
        self._credit = 0.0                           # the supervisor's rate scale: frames owed

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.1f s", self.name, timeout)
            return False
        return True

    def _run(self) -> None:
        reader = self.camera.slot.register()
        slots: dict[Engine, Slot] = {}
        inflight: collections.deque[_InFlight] = collections.deque()
        try:
            self._loop(reader, slots, inflight)
        except EdgeError as exc:
            self.error = exc
            log.error("%s failed: %s", self.name, exc)
        except Exception as exc:  # a bug must end the service (exit 1 -> restart), not leave a silent dead lane
            self.error = EdgeError(f"lane {self.name} crashed: {exc!r}")
            log.exception("%s crashed", self.name)
        finally:
            self.camera.slot.unregister(reader)
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
        last_accepted_ns: int | None = None          # none yet: CLOCK_MONOTONIC counts from boot, not from 0
        ended = False
        while not self._stop.is_set():
            want_more = not ended and (self.max_frames is None or submitted < self.max_frames)
            if want_more and len(inflight) < self.config.in_flight:
                try:
                    frame = self.camera.slot.get_after(reader, last_index, 0.0 if inflight else IDLE_POLL_S)
                except EndOfStream:
                    ended, frame = True, None
                if frame is not None:
                    if last_index >= 0:
                        self.stats.dropped_camera += frame.index - last_index - 1
                    last_index = frame.index
                    self.stats.captured += 1
                    if not self._accept(frame, last_accepted_ns):
                        self.stats.skipped_rate += 1
                        continue
                    last_accepted_ns = frame.t_capture_ns
                    self._submit(frame, slots, inflight)
                    submitted += 1
                    continue
            if inflight:
                self._finish(inflight.popleft())
            elif not want_more:
                return

    def _submit(self, frame: Frame, slots: dict[Engine, Slot], inflight: collections.deque[_InFlight]) -> None:
        """The frame boundary: the frame runs on the variant active now. At most `in_flight` frames are in
        flight over all of the lane's slots, so the slot of a new variant always has a free buffer. A slot that
        takes raw frames (TensorRT: the letterbox on the GPU, bit-identical to the task's CPU letterbox) gets
        the frame itself; otherwise the task preprocesses into the slot's input buffer."""
        engine = self.runtime.active()
        slot = self._slot(slots, engine)
        if slot.takes_frames:
            pending, meta = slot.submit_frame(frame.image)
        else:
            buf = slot.input()
            meta = self.runtime.task.preprocess(frame.image, buf)
            pending = slot.submit(buf)
        inflight.append(_InFlight(frame, meta, engine, pending))
        self.engine = engine

    def _accept(self, frame: Frame, last_accepted_ns: int | None) -> bool:
        """The task's rate limit, then the supervisor's rate scale (1.0: every frame; 0.5: every other;
        0: paused)."""
        if (self._min_gap_ns and last_accepted_ns is not None
                and frame.t_capture_ns - last_accepted_ns < self._min_gap_ns):
            return False
        self._credit = min(1.0, self._credit + self.runtime.rate_scale)
        if self._credit < 1.0 - 1e-9:
            return False
        self._credit -= 1.0
        return True

    def _finish(self, item: _InFlight) -> None:
        outputs = item.pending.wait(INFER_TIMEOUT_S, copy=False)    # decoded before the slot reuses them
        detections = self.runtime.task.postprocess(outputs, item.meta)
        self.stats.processed += 1
        h, w = item.frame.image.shape[:2]
        payload = protocol.det_message(
            task=self.config.name, camera=self.camera.id, frame=item.frame.index,
            t_capture_ns=item.frame.t_capture_ns, precision=item.engine.precision, engine=item.engine.name,
            size=(w, h), detections=detections, labels=self.runtime.task.labels if self.include_labels else None)
        self.publisher.publish(self.topic, payload, self.stats)

    def status(self, now_ns: int | None = None) -> dict[str, Any]:
        """A snapshot of this lane (nothing is reset by reading it)."""
        s = self.stats
        engine = self.engine or self.runtime.active()
        return {"task": s.task, "camera": s.camera, "fps": round(s.fps(now_ns or time.monotonic_ns()), 2),
                "latency_ms_p50": _round(s.latency_ms(0.5)), "latency_ms_p99": _round(s.latency_ms(0.99)),
                "captured": s.captured, "processed": s.processed, "published": s.published,
                "dropped_camera": s.dropped_camera, "dropped_publisher": s.dropped_publisher,
                "skipped_rate": s.skipped_rate, "precision": engine.precision, "engine": engine.name,
                "running": not self.finished.is_set()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
