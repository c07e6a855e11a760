"""A Lane per (task, camera): latest frame -> preprocess into the slot -> engine (K in flight)
-> postprocess -> publisher queue. While frame n runs, frame n+1 is preprocessed and submitted."""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

import numpy as np

from edge.backends.base import Engine, Pending, Slot
from edge.config import TaskConfig
from edge.errors import EdgeError
from edge.log import get_logger
from edge.protocol import det_topic
from edge.publisher import LaneStats, Publisher
from edge.sources import Camera, EndOfStream, Frame
from edge.tasks import Task

log = get_logger("pipeline")
INFER_TIMEOUT_S = 30.0
IDLE_POLL_S = 0.1


@dataclasses.dataclass
class _InFlight:
    frame: Frame
    meta: Any
    pending: Pending


class Lane:
    def __init__(self, config: TaskConfig, task: Task, engine: Engine, camera: Camera, publisher: Publisher, *,
                 max_frames: int | None = None, include_labels: bool = False) -> None:
        self.config = config
        self.task = task
        self.engine = engine
        self.camera = camera
        self.publisher = publisher
        self.max_frames = max_frames
        self.include_labels = include_labels
        self.name = f"{config.name}.{camera.id}"
        self.topic = det_topic(config.name, camera.id)
        self.stats = LaneStats(config.name, camera.id)
        self.error: EdgeError | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.name}", daemon=True)
        self._min_gap_ns = int(1e9 / config.rate_limit_hz) if config.rate_limit_hz > 0 else 0

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
        slot = self.engine.create_slot(self.name, depth=self.config.in_flight)
        inflight: collections.deque[_InFlight] = collections.deque()
        try:
            self._loop(reader, slot, inflight)
        except EdgeError as exc:
            self.error = exc
            log.error("%s failed: %s", self.name, exc)
        except Exception as exc:  # a bug must end the service (exit 1 -> restart), not leave a silent dead lane
            self.error = EdgeError(f"lane {self.name} crashed: {exc!r}")
            log.exception("%s crashed", self.name)
        finally:
            self.camera.slot.unregister(reader)
            slot.close()
            self.finished.set()

    def _loop(self, reader: int, slot: Slot, inflight: collections.deque[_InFlight]) -> None:
        last_index, submitted = -1, 0
        last_accepted_ns: int | None = None          # none yet: CLOCK_MONOTONIC counts from boot, not from 0
        ended = False
        while not self._stop.is_set():
            want_more = not ended and (self.max_frames is None or submitted < self.max_frames)
            if want_more and len(inflight) < slot.depth:
                try:
                    frame = self.camera.slot.get_after(reader, last_index, 0.0 if inflight else IDLE_POLL_S)
                except EndOfStream:
                    ended, frame = True, None
                if frame is not None:
                    if last_index >= 0:
                        self.stats.dropped_camera += frame.index - last_index - 1
                    last_index = frame.index
                    self.stats.captured += 1
                    if (self._min_gap_ns and last_accepted_ns is not None
                            and frame.t_capture_ns - last_accepted_ns < self._min_gap_ns):
                        self.stats.skipped_rate += 1
                        continue
                    last_accepted_ns = frame.t_capture_ns
                    buf = slot.input()
                    meta = self.task.preprocess(frame.image, buf)
                    inflight.append(_InFlight(frame, meta, slot.submit(buf)))
                    submitted += 1
                    continue
            if inflight:
                self._finish(inflight.popleft())
            elif not want_more:
                return

    def _finish(self, item: _InFlight) -> None:
        outputs = item.pending.wait(INFER_TIMEOUT_S)
        detections = self.task.postprocess(outputs, item.meta)
        self.stats.processed += 1
        self.publisher.publish(self.topic, self._payload(item.frame, detections), self.stats)

    def _payload(self, frame: Frame, detections: np.ndarray) -> dict[str, Any]:
        h, w = frame.image.shape[:2]
        rows = [[round(float(x1), 1), round(float(y1), 1), round(float(x2), 1), round(float(y2), 1),
                 round(float(score), 4), int(cls)] for x1, y1, x2, y2, score, cls in detections]
        payload = {"kind": "det", "task": self.config.name, "camera": self.camera.id, "frame": frame.index,
                   "t_capture_ns": frame.t_capture_ns, "precision": self.engine.precision,
                   "engine": self.engine.name, "size": [w, h], "detections": rows}
        if self.include_labels:
            payload["labels"] = [self.task.labels[r[5]] for r in rows]
        return payload
