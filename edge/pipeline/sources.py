"""What every camera reader keeps to (OpenCV's and FFmpeg's, GStreamer's on a Jetson, NVDEC's): the time to open a
source and to read each frame, the largest frame it takes before decoding, the check of a file:// camera's file
before it is opened, an RTSP camera's transport for FFmpeg, how a hardware reader refuses a camera, and what it does
while the lanes hold every surface."""
from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from edge import files
from edge.config.cameras import RTSP_TRANSPORT, CameraURI
from edge.errors import SourceError
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.gpu.surfaces import Surface, SurfacePool

log = get_logger("camera")

OPEN_TIMEOUT_MS = 2000           # a reader opens its source within this, or fails
READ_TIMEOUT_MS = 2000           # and then delivers each frame within this, or the source counts as lost (an rtsp
                                 # camera's `timeout=` sets its own; docs/reliability.md has the measurements)
FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"    # OpenCV reads FFmpeg's options from it as each capture opens
ACQUIRE_TIMEOUT_S = 2.0          # a hardware reader waits this long for a free frame surface, then says so


def read_timeout_ms(uri: CameraURI) -> int:
    """How long a reader waits for a frame of `uri` before the camera counts as stalled (lost, then reconnected)."""
    timeout = uri.params.get("timeout")
    return READ_TIMEOUT_MS if timeout is None else round(timeout * 1000)


def rtsp_transport(uri: CameraURI) -> str:
    """How an rtsp camera's RTP comes: `tcp` (interleaved in the RTSP session) or `udp`."""
    return uri.params.get("transport", RTSP_TRANSPORT)


class _FfmpegOptions:
    """OpenCV takes FFmpeg's `rtsp_transport` only from the process-wide environment variable FFMPEG_OPTIONS, read
    while a capture opens: `using` sets it for the opens that share one value and gives it back once the last of them
    returned. Opens come in turns, first come first served: one that needs the other value waits for those under way,
    and those that came after it wait for its turn. Every camera with the default transport opens at once.

    edge's pair goes first, before what the environment already held: FFmpeg parses the pairs in order, so a
    malformed tail of the operator's (a trailing '|', a backslash) cannot swallow it, and an `rtsp_transport` of
    the operator's own, later, wins over the URI's (warned once)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value: str | None = None
        self._users = 0
        self._queue: list[tuple[object, str]] = []        # waiting opens in order: (ticket, transport)
        self._saved: str | None = None
        self._warned = False

    def _may_enter(self, ticket: tuple[object, str]) -> bool:
        if self._users and self._value != ticket[1]:
            return False
        for waiting in self._queue:                    # no earlier open waits for the other value
            if waiting is ticket:
                return True
            if waiting[1] != ticket[1]:
                return False
        return False

    @contextmanager
    def using(self, transport: str) -> Iterator[None]:
        ticket = (object(), transport)
        with self._cond:
            self._queue.append(ticket)
            while not self._may_enter(ticket):
                self._cond.wait()
            self._queue.remove(ticket)
            if not self._users:
                self._saved = os.environ.get(FFMPEG_OPTIONS)
                own = f"rtsp_transport;{transport}"
                os.environ[FFMPEG_OPTIONS] = f"{own}|{self._saved}" if self._saved else own
                self._value = transport
                if self._saved and "rtsp_transport" in self._saved and not self._warned:
                    self._warned = True
                    log.warning("the environment's %s sets rtsp_transport, which wins over every rtsp camera's"
                                " transport= (docs/config.md); remove it there", FFMPEG_OPTIONS)
            self._users += 1
            self._cond.notify_all()                   # opens of the same value behind this one may join
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    if self._saved is None:
                        os.environ.pop(FFMPEG_OPTIONS, None)
                    else:
                        os.environ[FFMPEG_OPTIONS] = self._saved
                    self._value = None
                    self._cond.notify_all()


ffmpeg_options = _FfmpegOptions()


def check_frame_size(size: tuple[int, int], max_frame: tuple[int, int], what: str) -> None:
    """Refuse a frame (or a declared frame size) over `max_frame` before it is decoded: a file or stream that
    declares 16000x16000 would otherwise cost gigabytes per frame. A size of 0 (not declared) passes."""
    (w, h), (max_w, max_h) = size, max_frame
    if w > max_w or h > max_h:
        raise SourceError(f"{what} frames of {w}x{h}, larger than the {max_w}x{max_h} this camera accepts",
                          hint="set the camera's max_frame_size in the config (up to 8192x8192) if such frames are"
                               " expected; otherwise check the source")


def check_video_file(location: str) -> None:
    """A file:// camera must name a regular file that exists: say which of that is wrong (a missing file, a
    directory, a FIFO or a device such as /dev/zero, a path the system refuses) without opening it, so a FIFO
    never blocks the caller."""
    hint = ("check the path in the camera URI (file://ABSOLUTE/PATH or a path relative to the config file);"
            " `edge assets fetch` gets the demo video")
    try:
        info = os.stat(location)
    except FileNotFoundError:
        raise SourceError(f"camera file does not exist: {location}", hint=hint) from None
    except OSError as exc:
        raise SourceError(f"camera file {files.shown(location)} cannot be used: {exc.strerror}", hint=hint) from None
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"camera file {location} is not a regular file but {files.describe_mode(info.st_mode)}",
                          hint="file:// reads video files; use v4l2:///dev/videoN for a camera device, rtsp:// for"
                               " a stream")


class Refused(SourceError):
    """A hardware decode path cannot read this camera here, through no fault of the source (no library, GPU or
    element for it, a codec or container it does not take): `decode: auto` falls back to the CPU reader with the
    reason, `decode: nvdec` fails with it (edge/pipeline/runtime.py, Decoding)."""


class SurfaceWait:
    """How a hardware reader takes the surface for its next frame while the lanes still hold every one (a lane
    keeps frames longer than its in_flight, or frames are not released). A lossless file (realtime=0) waits as
    long as the lanes take, as its LatestFrame does, and drops nothing; any other source drops that frame after
    ACQUIRE_TIMEOUT_S and reads on, as a slow lane drops frames. The first of each is a warning, later ones debug."""

    def __init__(self, what: str, *, lossless: bool) -> None:
        self.what = what
        self.lossless = lossless
        self.dropped = 0                # frames dropped for want of a surface
        self.waited = 0                 # lossless: waits longer than ACQUIRE_TIMEOUT_S

    def acquire(self, pool: SurfacePool) -> Surface | None:
        """A surface for the next frame; None: drop that frame (counted in `dropped`)."""
        surface = pool.acquire(ACQUIRE_TIMEOUT_S)
        if surface is not None:
            return surface
        held = f"{self.what}: all {pool.count} frame surfaces are still held after {ACQUIRE_TIMEOUT_S:.1f} s"
        cause = "a lane keeps frames longer than its in_flight, or frames are not released"
        if self.lossless:
            self.waited += 1
            report = log.warning if self.waited == 1 else log.debug
            report("%s: waiting for the lanes, since realtime=0 drops no frame (%d such waits so far); %s", held,
                   self.waited, cause)
            return pool.acquire(None)
        self.dropped += 1
        report = log.warning if self.dropped == 1 else log.debug
        report("%s: decoded frame dropped (%d so far); %s", held, self.dropped, cause)
        return None
