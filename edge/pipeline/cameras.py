"""Cameras addressed by URI (the URI language: edge/config/cameras.py), one capture thread per used camera, its
latest frame kept for the lanes (LatestFrame)."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.config.cameras import MAX_FRAME, CameraURI
from edge.errors import SourceError, UsageError
from edge.log import get_logger
from edge.pipeline.clock import StreamClock
from edge.pipeline.gaps import FrameGaps
from edge.pipeline.readers import Reader, open_reader
from edge.pipeline.sources import check_frame_size, read_timeout_ms

if TYPE_CHECKING:
    from edge.gpu.surfaces import DeviceFrame

log = get_logger("camera")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
SHORT_FILE_SLACK_FRAMES = 3      # a file may end this many frames, or 5 %, before its declared count (an estimate)
SHORT_FILE_SLACK_SHARE = 0.05

EventSink = Callable[[str, dict[str, Any]], None]
Opener = Callable[[CameraURI, tuple[int, int]], Reader]     # opens a camera's reader: open_reader, runtime.Decoding


@dataclasses.dataclass(frozen=True)
class Frame:
    """One captured image with its camera frame index and CLOCK_MONOTONIC time: host BGR uint8 HxWx3 (`image`),
    or a frame left in device memory by a hardware decoder (`device`, image None; docs/gpu.md section 1).
    `size` is (width, height), kept here so that it stays readable after the device frame was released."""

    camera: str
    index: int
    t_capture_ns: int
    image: np.ndarray | None
    device: DeviceFrame | None = None
    size: tuple[int, int] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if (self.image is None) == (self.device is None):
            raise UsageError("a Frame holds a host image or a device frame, one of them",
                             note=f"camera {self.camera!r} frame {self.index}")
        size = (self.device.width, self.device.height) if self.device is not None else \
            (self.image.shape[1], self.image.shape[0])
        object.__setattr__(self, "size", size)

    def retain(self) -> None:
        """One more holder of a device frame (nothing for a host frame)."""
        if self.device is not None:
            self.device.retain()

    def release(self, stream: Any = None) -> None:
        """This holder is done with a device frame once `stream`'s work so far ran (nothing for a host frame)."""
        if self.device is not None:
            self.device.release(stream)


class EndOfStream(Exception):
    """The camera has no more frames (end of a non-looping file)."""


class LatestFrame:
    """The latest frame of one camera, kept for its readers (every lane that uses the camera).

    In lossless mode (`realtime=0` files) `put` waits until every registered reader has
    read the current frame, so nothing is dropped; otherwise a new frame replaces the old one.

    A device frame's reference (its producer's) is the LatestFrame's while it keeps the frame; `get_after`
    retains one more for the reader it hands the frame to, which releases it when done. The LatestFrame
    releases its own when a newer frame replaces it (so a frame nobody took goes back to its pool), when `put`
    refuses it (stopped or closed), when `drop_device` says its producer closed, and once closed when every
    registered reader has taken it or left.
    """

    def __init__(self, *, lossless: bool) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self._lossless = lossless
        self._readers: dict[int, int] = {}
        self._next_reader = 0

    def register(self) -> int:
        """A new reader id; the reader has seen nothing yet."""
        with self._cond:
            self._next_reader += 1
            self._readers[self._next_reader] = -1
            return self._next_reader

    def unregister(self, reader: int) -> None:
        with self._cond:
            self._readers.pop(reader, None)
            self._settle()
            self._cond.notify_all()

    def put(self, frame: Frame, *, stop: threading.Event) -> bool:
        """Publish a frame; in lossless mode wait for readers first. False when stopped or closed (a device
        frame is then released)."""
        with self._cond:
            if self._lossless and self._frame is not None:
                while not self._closed and not stop.is_set() and any(
                        seen < self._frame.index for seen in self._readers.values()):
                    self._cond.wait(0.1)
            if self._closed or stop.is_set():
                frame.release()
                return False
            replaced, self._frame = self._frame, frame
            if replaced is not None:
                replaced.release()
            self._cond.notify_all()
            return True

    def get_after(self, reader: int, index: int, timeout: float) -> Frame | None:
        """The latest frame newer than `index`, or None after `timeout` s; EndOfStream when closed. A device
        frame comes retained for the caller, which releases it once; one whose pool was freed is dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.index <= index or not self._retained(self._frame):
                if self._closed:
                    raise EndOfStream
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            frame = self._frame
            self._readers[reader] = frame.index
            self._settle()
            self._cond.notify_all()
            return frame

    def drop_device(self) -> None:
        """The reader that made the kept frame closed (a live camera lost): release a device frame, so that no
        lane takes it later, after its pool was freed (an outage may outlast SurfacePool.retire's wait)."""
        with self._cond:
            frame = self._frame
            if frame is not None and frame.device is not None:
                self._frame = None
                frame.release()

    def _retained(self, frame: Frame) -> bool:
        """Retain the frame for a reader; False (and the frame dropped) where its pool was freed (lock held)."""
        try:
            frame.retain()
        except UsageError:
            self._frame = None
            frame.release()                 # the LatestFrame's reference, from a freed pool: nothing more to do
            return False
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._settle()
            self._cond.notify_all()

    def _settle(self) -> None:
        """Closed: release the last device frame once no registered reader still has to take it (lock held)."""
        frame = self._frame
        if self._closed and frame is not None and frame.device is not None and all(
                seen >= frame.index for seen in self._readers.values()):
            self._frame = None
            frame.release()


def ended_short(frames: int, declared: int) -> bool:
    """True when a file that declares `declared` frames ended clearly before them (0: nothing declared)."""
    return declared - frames > max(SHORT_FILE_SLACK_FRAMES, SHORT_FILE_SLACK_SHARE * declared)


@dataclasses.dataclass
class CameraStats:
    captured: int = 0
    reconnects: int = 0
    outages: int = 0                 # times the camera was lost (a failed open, a read that failed or stalled)
    connected: bool = False
    # Frames video files declared in their header but never delivered, summed over the passes that ended
    # short (`ended_short`): a truncated file, or damage the decoder could not get past. Damage that FFmpeg
    # conceals (it still returns the frame) is not seen here: OpenCV reports no decode errors.
    missing_frames: int = 0
    # An RTSP stream's skips (edge/pipeline/gaps.py): gaps in its timestamps, and the frames they lost. Packet loss
    # whose damage FFmpeg conceals in a frame it still returns is not seen here.
    stream_gaps: int = 0
    lost_frames: int = 0


class Camera:
    """One capture thread for one camera: reads frames into its LatestFrame, reconnects with backoff.

    `open()` opens the source once in the caller's thread: a file that cannot be read fails it; a live source
    that cannot be opened yet is reported lost and retried in the background once `start()` starts the thread.
    A camera opened but never started is closed by `stop()`.
    """

    def __init__(self, camera_id: str, uri: CameraURI, *, on_event: EventSink,
                 max_frame: tuple[int, int] = MAX_FRAME, opener: Opener | None = None) -> None:
        self.id = camera_id
        self.uri = uri
        self.max_frame = max_frame
        self._open_reader = opener or open_reader       # runtime.Decoding chooses by the camera's `decode`
        self.latest = LatestFrame(lossless=uri.lossless)
        self.stats = CameraStats()
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Reader | None = None
        self._opened = False
        self._index = 0
        self._warned_short = False
        # an RTSP frame's t_capture_ns comes from its stream time (a reader's `pts_ms`), docs/protocol.md
        self.clock = StreamClock(camera_id) if uri.scheme == "rtsp" else None
        self.gaps = FrameGaps(camera_id, read_timeout_ms(uri)) if uri.scheme == "rtsp" else None

    @property
    def live(self) -> bool:
        return self.uri.scheme in ("v4l2", "rtsp", "csi")

    @property
    def started(self) -> bool:
        return self._thread is not None

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            self._reader = self._open_reader(self.uri, self.max_frame)
            self.stats.connected = True
        except SourceError as exc:
            if not self.live:
                raise SourceError(f"camera {self.id!r}: {exc.what}", note=exc.note, hint=exc.hint) from exc
            self._lost(str(exc.what))

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.id}", daemon=True)
        self._thread.start()
        log.info("%s started (%s)", self.id, self.uri.redacted())

    def stop(self, timeout: float) -> bool:
        """Stop capturing; True when the thread ended within `timeout` seconds."""
        self._stop.set()
        self.latest.close()
        if self._thread is None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: capture thread did not stop within %.1f s (blocked in the driver?)", self.id, timeout)
            return False
        return True

    def _lost(self, reason: str) -> None:
        self.stats.connected = False
        self.stats.outages += 1
        log.warning("%s lost: %s", self.id, reason)
        self._on_event("camera.lost", {"camera": self.id, "reason": reason})

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        try:
            while not self._stop.is_set():
                if self._reader is None:
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    self._reconnect()
                    continue
                backoff = BACKOFF_START_S
                if not self._pump(self._reader):
                    return
        finally:
            if self._reader is not None:
                self._reader.close()
            self.latest.close()

    def _reconnect(self) -> None:
        try:
            self._reader = self._open_reader(self.uri, self.max_frame)
        except SourceError as exc:
            log.debug("%s: reconnect failed: %s", self.id, exc.what)
            return
        self.stats.reconnects += 1
        if self.clock is not None:
            self.clock.reset()
        if self.gaps is not None:
            self.gaps.reset()
        self.stats.connected = True
        log.info("%s recovered", self.id)
        self._on_event("camera.recovered", {"camera": self.id})

    def _pump(self, reader: Reader) -> bool:
        """Read frames until the source fails or ends. False means: stop the thread."""
        realtime = not self.uri.lossless and not self.live
        period_ns = int(1e9 / reader.fps)
        next_ns = time.monotonic_ns()
        stall_ns = read_timeout_ms(self.uri) * 1_000_000 if self.uri.scheme == "rtsp" else None
        while not self._stop.is_set():
            asked_ns = time.monotonic_ns()
            image = reader.read()
            if image is None:
                return self._source_ended(reader)
            waited_ns = time.monotonic_ns() - asked_ns
            if stall_ns is not None and waited_ns >= stall_ns:
                return self._stalled(reader, image, waited_ns / 1e9)
            host = isinstance(image, np.ndarray)
            captured = time.monotonic_ns()
            pts_ms = reader.pts_ms if self.clock is not None else None    # None: untimed, counted
            if self.clock is not None:
                captured = self.clock.capture_ns(pts_ms, captured)
            if self.gaps is not None:
                gaps, lost = self.gaps.lost(pts_ms)
                self.stats.stream_gaps += gaps
                self.stats.lost_frames += lost
            frame = Frame(self.id, self._index, captured, image if host else None, None if host else image)
            try:
                check_frame_size(frame.size, self.max_frame, f"camera {self.id!r} delivered")
            except SourceError as exc:
                frame.release()
                return self._refused_frame(reader, exc)
            self._index += 1
            self.stats.captured += 1
            if not self.latest.put(frame, stop=self._stop):
                return False
            if realtime:
                next_ns += period_ns
                delay = (next_ns - time.monotonic_ns()) / 1e9
                if delay > 0 and self._stop.wait(delay):
                    return False
        return False

    def _closed_reader(self, reader: Reader) -> None:
        """Close the reader. A live camera's device frame that no lane took goes back first: none may take it after
        the reader's pool was freed. A file's last frame stays for the lanes (realtime=0 drops none)."""
        if self.live:
            self.latest.drop_device()
        reader.close()
        self._reader = None

    def _refused_frame(self, reader: Reader, exc: SourceError) -> bool:
        """A frame over max_frame (a stream that changed its size, a file whose header lied): a live source is lost
        and reconnects; a file is not read further."""
        self._closed_reader(reader)
        if self.live:
            self._lost(exc.what)
            return True
        log.error("%s; the file is not read further. Hint: %s", exc.what, exc.hint)
        self._on_event("camera.lost", {"camera": self.id, "reason": exc.what})
        return False

    def _stalled(self, reader: Reader, image: np.ndarray | DeviceFrame, waited_s: float) -> bool:
        """A read that gave up after the read timeout still returns a stale frame FFmpeg's decoder threads held
        back; failing reads would come one timeout per held frame later (docs/reliability.md). Lost, reconnected."""
        if not isinstance(image, np.ndarray):
            image.release(None)
        self._closed_reader(reader)
        self._lost(f"no frame for {waited_s:.1f} s (the stream stalled; timeout {read_timeout_ms(self.uri)} ms)")
        return True

    def _source_ended(self, reader: Reader) -> bool:
        self._closed_reader(reader)
        if self.live:
            self._lost("no frame from the device")
            return True
        self._check_length(reader)
        if self.uri.params.get("loop"):
            self._reconnect_file()
            return True
        log.info("%s: end of stream after %d frames", self.id, self._index)
        return False

    def _check_length(self, reader: Reader) -> None:
        """Count and report a file that ended well before the frame count its header declares; a looping
        file warns on its first short pass, later ones only count (and log at debug)."""
        frames, declared = reader.frames, reader.declared_frames
        if not ended_short(frames, declared):
            return
        self.stats.missing_frames += declared - frames
        report = log.debug if self._warned_short else log.warning
        self._warned_short = True
        report("%s: video file %s ended after %d of the %d frames its header declares: the file may be truncated"
               " or corrupt (copied before it was complete?); `ffmpeg -v error -i %s -f null -` lists what FFmpeg"
               " finds wrong with it", self.id, self.uri.location, frames, declared, self.uri.location)

    def _reconnect_file(self) -> None:
        try:
            self._reader = self._open_reader(self.uri, self.max_frame)
        except SourceError as exc:
            self._lost(exc.what)
