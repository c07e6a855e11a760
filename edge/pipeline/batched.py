"""A task with `batch: true` runs one BatchedLane over all its cameras instead of a Lane per camera
(edge/pipeline/lanes.py): it gathers one frame per camera into one batched execution (K batches in flight), and
publishes each camera's result on that camera's topic, with that camera's counters (a BatchMember per camera is
what the service sees, so messages and heartbeats look as they do without batching).

The gather rule: a batch opens when the first of its frames arrives and runs when every awaited camera has given
one, or half a frame interval (of the fastest camera, estimated from capture times; 1/30 s until known) after it
opened, with what has arrived. A camera that has ended, or given no frame for ABSENT_INTERVALS of its frame
intervals (lost), is not awaited; a camera without a frame in a batch gets no message for it. The variant is read
at each batch boundary, so every frame of a batch runs on one variant and its result names it.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from edge.engines.base import Engine, Pending, Slot, WaitTimeout, batch_error
from edge.errors import EdgeError
from edge.pipeline.cameras import Camera, EndOfStream, Frame
from edge.pipeline.lanes import IDLE_POLL_S, INFER_TIMEOUT_S, CameraLane, HostCopies, RateGate, ended_by, joined
from edge.wire.publisher import Publisher

if TYPE_CHECKING:
    from edge.pipeline.runtime import TaskRuntime

DEFAULT_INTERVAL_NS = 1_000_000_000 // 30   # a camera's frame interval until its capture times tell
ABSENT_INTERVALS = 3        # a batched lane stops awaiting a camera silent for this many of its frame intervals
FEED_JOIN_S = 2 * IDLE_POLL_S


class CameraFeed:
    """The newest frame of one camera that its batched lane has not taken yet, kept by a thread of its own so
    the lane can wait for all its cameras at once. A lossless camera (a file at realtime=0) is read on only
    after the lane took the frame, so nothing is dropped; otherwise a newer frame replaces the one waiting
    (the lane counts the frames it never saw from the indexes, as a Lane does). `arrived` guards the fields
    and is notified at each change."""

    def __init__(self, camera: Camera, arrived: threading.Condition, name: str) -> None:
        self.camera = camera
        self.frame: Frame | None = None
        self.arrived_ns = 0                     # when the waiting frame arrived (CLOCK_MONOTONIC)
        self.seen_ns = 0                        # when the camera last gave a frame (at first: when the feed started)
        self.interval_ns = 0                    # the camera's frame interval from its capture times (0: not known)
        self.ended = False
        self.failure: Exception | None = None
        self._arrived = arrived
        self._closed = threading.Event()
        self._lossless = camera.uri.lossless
        self._reader = 0
        self._thread = threading.Thread(target=self._run, name=f"feed-{name}", daemon=True)

    def start(self) -> None:
        self._reader = self.camera.latest.register()
        self.seen_ns = time.monotonic_ns()
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._arrived:
            self._arrived.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def take(self) -> Frame | None:
        """The waiting frame, now the lane's (called with `arrived` held)."""
        frame, self.frame = self.frame, None
        return frame

    def _run(self) -> None:
        try:
            self._pump()
        except EndOfStream:
            pass
        except Exception as exc:  # handed to the batched lane, which fails: never a silently dead camera
            self.failure = exc
        finally:
            self.camera.latest.unregister(self._reader)
            with self._arrived:
                self.ended = True
                self._arrived.notify_all()

    def _pump(self) -> None:
        last: Frame | None = None
        while not self._closed.is_set():
            if self._lossless and not self._taken():
                return
            frame = self.camera.latest.get_after(self._reader, -1 if last is None else last.index, IDLE_POLL_S)
            if frame is not None:
                self._estimate(last, frame)
                self._put(frame)
                last = frame

    def _taken(self) -> bool:
        """Wait until the lane took the waiting frame; False when the feed closed first."""
        with self._arrived:
            while self.frame is not None and not self._closed.is_set():
                self._arrived.wait(IDLE_POLL_S)
        return not self._closed.is_set()

    def _put(self, frame: Frame) -> None:
        """Keep `frame` for the lane; a device frame it replaces, or one that comes after close, is released."""
        now = time.monotonic_ns()
        with self._arrived:
            if self._closed.is_set():
                frame.release()
                return
            if self.frame is None:
                self.arrived_ns = now
            else:
                self.frame.release()
            self.frame, self.seen_ns = frame, now
            self._arrived.notify_all()

    def _estimate(self, last: Frame | None, frame: Frame) -> None:
        if last is None or frame.t_capture_ns <= last.t_capture_ns:
            return
        gap = (frame.t_capture_ns - last.t_capture_ns) // (frame.index - last.index)
        self.interval_ns = gap if not self.interval_ns else (7 * self.interval_ns + gap) // 8


class BatchMember(CameraLane):
    """One camera of a batched lane as the service sees a lane: name `task.camera`, its own counters and det
    topic, its own feed. Start and stop act on the whole batched lane."""

    def __init__(self, group: BatchedLane, camera: Camera) -> None:
        super().__init__(group.runtime, camera, group.publisher, include_labels=group.include_labels)
        self.group = group
        self.feed = CameraFeed(camera, group.arrived, self.name)
        self.done = False                           # it has run max_frames frames
        self._last_index = -1
        self._submitted = 0

    @property
    def engine(self) -> Engine | None:              # type: ignore[override]
        return self.group.engine

    @property
    def finished(self) -> threading.Event:          # type: ignore[override]
        return self.group.finished

    @property
    def error(self) -> EdgeError | None:            # type: ignore[override]
        return self.group.error

    @property
    def slots(self) -> dict[Engine, Slot]:          # type: ignore[override]
        return self.group.slots

    def start(self) -> None:
        self.group.start()

    def stop(self, timeout: float) -> bool:
        return self.group.stop(timeout)

    def has_frame(self) -> bool:
        return not self.done and self.feed.frame is not None

    def is_open(self) -> bool:
        """It may still give frames to a batch (with `arrived` held)."""
        return not self.done and (not self.feed.ended or self.feed.frame is not None)

    def awaited(self, now_ns: int) -> bool:
        """A batch waits for this camera: open, no frame yet, and not silent for ABSENT_INTERVALS (`arrived` held)."""
        feed = self.feed
        silent = now_ns - feed.seen_ns > ABSENT_INTERVALS * (feed.interval_ns or DEFAULT_INTERVAL_NS)
        return not self.done and not feed.ended and feed.frame is None and not silent

    def saw(self, frame: Frame) -> None:
        if self._last_index >= 0:
            self.stats.dropped_camera += frame.index - self._last_index - 1
        self._last_index = frame.index
        self.stats.captured += 1

    def submitted(self, max_frames: int | None) -> None:
        self._submitted += 1
        if max_frames is not None and self._submitted >= max_frames:
            self.done = True
            self.feed.close()


@dataclasses.dataclass
class _Batch:
    frames: list[tuple[BatchMember, Frame]]
    metas: list[Any]
    engine: Engine
    pending: Pending
    deadline: float                 # time.monotonic() when INFER_TIMEOUT_S has passed since it was submitted


class BatchedLane:
    """One batched execution over all cameras of a task (`batch: true`): a thread that gathers a frame per camera
    (the gather rule is in this module's docstring), runs them as one batch on a batched slot of the active
    variant (K batches in flight) and publishes each camera's result through its BatchMember (`members`)."""

    def __init__(self, runtime: TaskRuntime, cameras: list[Camera], publisher: Publisher, *,
                 max_frames: int | None = None, include_labels: bool = False) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.publisher = publisher
        self.max_frames = max_frames
        self.include_labels = include_labels
        self.name = f"{self.config.name}.{'+'.join(camera.id for camera in cameras)}"
        self.arrived = threading.Condition()
        self.members = [BatchMember(self, camera) for camera in cameras]
        self.engine: Engine | None = None           # the variant of the last batch submitted
        self.error: EdgeError | None = None
        self.finished = threading.Event()
        self.slots: dict[Engine, Slot] = {}         # the batched slot on each variant it ran
        self._stop = threading.Event()
        self._gate = RateGate(runtime)
        self._host = HostCopies(self.name)
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.name}", daemon=True)

    @staticmethod
    def check(runtime: TaskRuntime, cameras: int) -> None:
        """Refuse a task whose loaded variants cannot run its cameras as one batch, before anything starts."""
        for engine in runtime.variants.engines.values():
            if engine.is_active and not engine.batch_sizes.takes(cameras):
                raise batch_error(engine, cameras, f"task {runtime.name}: batch: true over {cameras} cameras",
                                  also="; or set batch: false (a lane per camera)")

    def start(self) -> None:
        """Start the feeds and the lane (once: every member calls it)."""
        if self._thread.ident is None:
            for member in self.members:
                member.feed.start()
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        with self.arrived:
            self.arrived.notify_all()
        return joined(self._thread, timeout, self.name)

    def _run(self) -> None:
        slots = self.slots
        inflight: collections.deque[_Batch] = collections.deque()
        try:
            self.error = ended_by(self.name, lambda: self._loop(slots, inflight))
        finally:
            self._close(slots)

    def _close(self, slots: dict[Engine, Slot]) -> None:
        for member in self.members:
            member.feed.close()
        for member in self.members:
            member.feed.join(FEED_JOIN_S)
        with self.arrived:
            for member in self.members:
                waiting = member.feed.take()
                if waiting is not None:
                    waiting.release()
        for slot in slots.values():
            slot.close()
        self.finished.set()

    def _loop(self, slots: dict[Engine, Slot], inflight: collections.deque[_Batch]) -> None:
        while not self._stop.is_set():
            room = len(inflight) < self.config.in_flight
            taken = self._gather() if room else None
            if taken:
                self._take(taken, slots, inflight)
            elif inflight:
                self._finish_oldest(inflight, room=room)
            elif not self._wait():
                return

    def _gather(self) -> list[tuple[BatchMember, Frame]] | None:
        """The frames of the next batch, once it is ready (see `_state`)."""
        with self.arrived:
            if not self._state(time.monotonic_ns())[0]:
                return None
            taken = [(member, member.feed.take()) for member in self.members if member.has_frame()]
            self.arrived.notify_all()                # lossless feeds read on
        return [(member, frame) for member, frame in taken if frame is not None]

    def _wait(self) -> bool:
        """Wait for a frame or an ended camera, or until the gathered batch is due; False when every camera has
        ended or run its frames."""
        with self.arrived:
            now = time.monotonic_ns()
            ready, due_ns = self._state(now)
            if ready:
                return True
            if not any(member.is_open() for member in self.members):
                return False
            self.arrived.wait(IDLE_POLL_S if due_ns is None else (due_ns - now) / 1e9)
        return True

    def _state(self, now_ns: int) -> tuple[bool, int | None]:
        """(ready, due): a batch opens when its first frame arrives and is ready when no camera is awaited any
        more, or at `due`, half a frame interval after it opened (`arrived` held; a failed feed raises)."""
        for member in self.members:
            if member.feed.failure is not None:
                raise EdgeError(f"lane {self.name}: the feed of camera {member.camera.id} crashed:"
                                f" {member.feed.failure!r}")
        waiting = [member for member in self.members if member.has_frame()]
        if not waiting:
            return False, None
        if not any(member.awaited(now_ns) for member in self.members):
            return True, None
        due_ns = min(member.feed.arrived_ns for member in waiting) + self._gather_wait_ns()
        return now_ns >= due_ns, due_ns

    def _gather_wait_ns(self) -> int:
        """Half the frame interval of the fastest camera still running."""
        running = [m.feed.interval_ns or DEFAULT_INTERVAL_NS for m in self.members if not m.done and not m.feed.ended]
        return min(running, default=DEFAULT_INTERVAL_NS) // 2

    def _take(self, taken: list[tuple[BatchMember, Frame]], slots: dict[Engine, Slot],
              inflight: collections.deque[_Batch]) -> None:
        for member, frame in taken:
            member.saw(frame)
        if not self._gate.accept(min(frame.t_capture_ns for _, frame in taken)):
            for member, frame in taken:
                member.stats.skipped_rate += 1
                frame.release()
            return
        for member, _ in taken:
            member.submitted(self.max_frames)
        self._submit(taken, slots, inflight)

    def _slot(self, slots: dict[Engine, Slot], engine: Engine) -> Slot:
        """The lane's batched slot on `engine`, for a batch of all its cameras, made when it first runs it."""
        slot = slots.get(engine)
        if slot is None:
            slot = slots[engine] = engine.create_slot(self.name, depth=self.config.in_flight,
                                                      batch=len(self.members))
        return slot

    def _submit(self, taken: list[tuple[BatchMember, Frame]], slots: dict[Engine, Slot],
                inflight: collections.deque[_Batch]) -> None:
        """The batch boundary: all its frames run on the variant active now, letterboxed by the slot where it
        takes raw frames (TensorRT; device frames read in place when all of the batch's are), else by the task
        into the slot's input rows."""
        frames = [frame for _, frame in taken]
        engine = self.runtime.active()
        try:
            slot = self._slot(slots, engine)
        except BaseException:
            for frame in frames:
                frame.release()
            raise
        if slot.takes_device_frames and all(frame.device is not None for frame in frames):
            pending, metas = slot.submit_device_frames([frame.device for frame in frames])
        else:
            images = self._host.images(frames, slot, slot.device_frames_refused
                                       or "the batch mixes host and device frames")
            if slot.takes_frames:
                pending, metas = slot.submit_frames(images)
            else:
                buf = slot.input()
                metas = self.runtime.task.preprocess_batch(images, buf)
                pending = slot.submit(buf, count=len(images))
        inflight.append(_Batch(taken, metas, engine, pending, time.monotonic() + INFER_TIMEOUT_S))
        self.engine = engine

    def _finish_oldest(self, inflight: collections.deque[_Batch], *, room: bool) -> None:
        """Wait for the oldest batch and publish its results. With room for another batch, wait only until the
        batch being gathered is due (or, with none open yet, half a frame interval) and then look for frames
        again: the next batch goes in flight while older ones run."""
        oldest = inflight[0]
        left = oldest.deadline - time.monotonic()
        step = self._next_look() if room else None
        try:
            outputs = oldest.pending.wait(max(0.0, left if step is None else min(left, step)), copy=False)
        except WaitTimeout:
            if step is None or step >= left:
                raise
            return
        inflight.popleft()
        results = self.runtime.task.postprocess_batch(outputs, oldest.metas)   # before the slot reuses them
        for (member, frame), detections in zip(oldest.frames, results):
            member.publish(frame, oldest.engine, detections)

    def _next_look(self) -> float:
        """Seconds until the lane should look for frames again: until the batch being gathered is due (0: ready
        now), or half a frame interval while none is being gathered."""
        with self.arrived:
            now = time.monotonic_ns()
            ready, due_ns = self._state(now)
            wait_ns = 0 if ready else self._gather_wait_ns() if due_ns is None else due_ns - now
        return wait_ns / 1e9
