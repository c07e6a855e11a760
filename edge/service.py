"""The daemon: builds everything from config, starts and stops in bounded steps, heartbeats."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from edge import __version__, bundle, peers
from edge.backends import tensorrt
from edge.backends.base import Engine
from edge.backends.onnxruntime import OnnxRuntimeEngine
from edge.config import Config, TaskConfig
from edge.errors import EdgeError
from edge.log import get_logger
from edge.pipeline import Lane
from edge.publisher import Publisher
from edge.sources import Camera
from edge.tasks import build_task

log = get_logger("service")
STOP_TIMEOUT_S = 5.0


FALLBACK_ORDER = ("fp16", "fp32")     # what a task runs when its configured variant was refused


def _has_plan(manifest: bundle.Manifest, precision: str) -> bool:
    return any(v.format == "plan" and v.precision == precision for v in manifest.variants)


def make_engine(task: TaskConfig, total_lanes: int) -> Engine:
    """The task's engine. ONNX Runtime threads default to the usable cores shared among all lanes:
    two sessions running at once with all cores each oversubscribe the CPU (benchmarks/cpu_pipeline.py)."""
    precision = task.active_precision
    threads = task.threads or max(1, len(os.sched_getaffinity(0)) // max(1, total_lanes))
    if task.engines is None:
        return OnnxRuntimeEngine(task.model_files[precision], precision=precision, threads=threads)
    manifest = bundle.Manifest.load(Path(task.engines))
    for refused, record in sorted(manifest.refused.items()):
        log.warning("task %s: the %s variant of %s was refused when it was made: %s", task.name, refused,
                    manifest.model, record["reason"])
    if precision in manifest.refused:
        precision = next((p for p in FALLBACK_ORDER if manifest.onnx(p) is not None or _has_plan(manifest, p)),
                         precision)
        log.warning("task %s: running %s instead of the configured %s", task.name, precision, task.active_precision)
    choice = bundle.resolve(manifest, precision, device=tensorrt.device_key(), allow_onnx=task.allow_onnx)
    for reason in choice.rejected:
        log.info("task %s: not using %s", task.name, reason)
    if choice.format == "plan":
        return tensorrt.TensorRTEngine(choice.path, precision=precision, expected=choice.variant.device)
    return OnnxRuntimeEngine(choice.path, precision=precision, threads=threads)


class Service:
    """`start()` acquires (socket, engines, cameras, lanes), `stop()` releases, `run()` waits in between."""

    def __init__(self, config: Config, *, max_frames: int | None = None, wait_subscriber_s: float = 0.0) -> None:
        self.config = config
        self.max_frames = max_frames
        self.wait_subscriber_s = wait_subscriber_s
        self.publisher = Publisher(config.output.results, sndhwm=config.output.sndhwm,
                                   queue_size=config.output.queue_size)
        self.engines: dict[str, Engine] = {}
        self.cameras: dict[str, Camera] = {}
        self.lanes: list[Lane] = []
        self._started_ns = time.monotonic_ns()
        self._last_processed: dict[str, tuple[int, int]] = {}

    def start(self, stop: threading.Event | None = None) -> None:
        """Start everything; on any failure, stop what was started and raise. A `stop` set while waiting
        for the first subscriber ends the start early (no camera is opened) and `run` then returns 0."""
        try:
            self._start(stop or threading.Event())
        except BaseException:
            self.stop(STOP_TIMEOUT_S)
            raise

    def _start(self, stop: threading.Event) -> None:
        peers.raise_open_files_limit()
        self.publisher.start()
        tasks = [t for t in self.config.tasks if t.enabled]
        if not tasks:
            raise EdgeError("no task is enabled", hint="set `enabled: true` on at least one task")
        built = {}
        total_lanes = sum(len(t.cameras) for t in tasks)
        for task in tasks:
            engine = make_engine(task, total_lanes)
            log.info("task %s: loading %s", task.name, engine.name)
            engine.activate()
            self.engines[task.name] = engine
            built[task.name] = build_task(task, engine)
            engine.warmup()
        if self.wait_subscriber_s > 0 and not self._wait_for_subscriber(stop):
            if stop.is_set():
                log.info("stopping while waiting for the first subscriber")
                return
            raise EdgeError(f"no subscriber connected to {self.publisher.endpoint} within {self.wait_subscriber_s} s",
                            hint="start the subscriber first, or drop --wait-subscriber")
        for camera_id in self.config.used_camera_ids():
            uri = self.config.camera(camera_id).parsed
            self.cameras[camera_id] = Camera(camera_id, uri, on_event=self.publisher.event)
        for task in tasks:
            for camera_id in task.cameras:
                self.lanes.append(Lane(task, built[task.name], self.engines[task.name], self.cameras[camera_id],
                                       self.publisher, max_frames=self.max_frames,
                                       include_labels=self.config.output.labels))
        for lane in self.lanes:
            lane.start()
        for camera in self.cameras.values():
            camera.start()
        log.info("running %d lane(s) on %d camera(s): %s", len(self.lanes), len(self.cameras),
                 ", ".join(lane.name for lane in self.lanes))

    def _wait_for_subscriber(self, stop: threading.Event) -> bool:
        log.info("waiting up to %s s for a first subscriber on %s", self.wait_subscriber_s, self.publisher.endpoint)
        deadline = time.monotonic() + self.wait_subscriber_s
        while not stop.is_set() and time.monotonic() < deadline:
            if self.publisher.wait_for_subscriber(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
        return False

    def run(self, stop: threading.Event) -> int:
        """Heartbeat until `stop` is set, every lane has finished, or one failed (then 1: systemd restarts us)."""
        period = 1.0 / self.config.output.heartbeat_hz
        next_beat = time.monotonic()
        while not stop.is_set():
            if all(lane.finished.is_set() for lane in self.lanes) or any(lane.error for lane in self.lanes):
                break
            if time.monotonic() >= next_beat:
                self.publish_heartbeat()
                next_beat += period
            stop.wait(min(0.05, max(0.0, next_beat - time.monotonic())))
        self.publish_heartbeat()
        failed = [lane for lane in self.lanes if lane.error is not None]
        for lane in failed:
            log.error("lane %s ended with an error: %s", lane.name, lane.error)
        return 1 if failed else 0

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Release everything in order, each step bounded by what is left of `timeout`."""
        deadline = time.monotonic() + timeout
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        for lane in self.lanes:
            lane.stop(left())
        for camera in self.cameras.values():
            camera.stop(left())
        for engine in self.engines.values():
            engine.deactivate()
        self.publisher.stop(left())
        log.info("stopped")

    def lane_status(self) -> list[dict[str, Any]]:
        now = time.monotonic_ns()
        rows = []
        for lane in self.lanes:
            s = lane.stats
            prev_count, prev_ns = self._last_processed.get(lane.name, (0, self._started_ns))
            fps = (s.processed - prev_count) / max(1e-9, (now - prev_ns) / 1e9)
            self._last_processed[lane.name] = (s.processed, now)
            rows.append({"task": s.task, "camera": s.camera, "fps": round(fps, 2),
                         "latency_ms_p50": _round(s.latency_ms(0.5)), "latency_ms_p99": _round(s.latency_ms(0.99)),
                         "captured": s.captured, "processed": s.processed, "published": s.published,
                         "dropped_camera": s.dropped_camera, "dropped_publisher": s.dropped_publisher,
                         "skipped_rate": s.skipped_rate, "precision": lane.engine.precision,
                         "engine": lane.engine.name, "running": not lane.finished.is_set()})
        return rows

    def publish_heartbeat(self) -> None:
        cameras = [{"id": c.id, "connected": c.stats.connected, "captured": c.stats.captured,
                    "reconnects": c.stats.reconnects, "missing_frames": c.stats.missing_frames}
                   for c in self.cameras.values()]
        self.publisher.publish("sys.heartbeat", {
            "kind": "heartbeat", "version": __version__,
            "uptime_s": round((time.monotonic_ns() - self._started_ns) / 1e9, 3),
            "lanes": self.lane_status(), "cameras": cameras,
            "connections": self.publisher.connections, "subscriptions": self.publisher.subscriptions,
            "refused_connections": self.publisher.refused_connections,
            "rejected_inbound": self.publisher.rejected_inbound, "dropped_other": self.publisher.dropped_other})


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
