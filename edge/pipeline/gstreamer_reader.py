"""The reader of a GStreamer camera on a Jetson (the pipelines: edge/pipeline/gstreamer.py): each BGRx frame VIC
left in system memory is copied once, into a mapped pinned surface of the reader's own pool, and handed out as a
DeviceFrame whose plane is that surface's device pointer, so the letterbox kernel reads it in place. Its pool and
the one copy: docs/gpu.md, "Decode on a Jetson"."""
from __future__ import annotations

import ctypes
import functools
import time
from typing import Any

from edge.config.cameras import CameraURI
from edge.errors import SourceError
from edge.gpu.surfaces import DeviceFrame, SurfacePool
from edge.log import get_logger
from edge.pipeline.gstreamer import (
    CODECS,
    JETSON_ELEMENTS,
    csi_pipeline,
    describe,
    gst_error,
    import_gst,
    missing_elements,
    parse,
    pipeline_description,
    probe,
    scrub,
)
from edge.pipeline.sources import (
    OPEN_TIMEOUT_MS,
    Refused,
    SurfaceWait,
    check_frame_size,
    check_video_file,
    read_timeout_ms,
)

log = get_logger("camera")

PULL_SLICE_S = 0.1               # a reader waiting for a frame looks at the bus for errors this often


def open_gstreamer_reader(uri: CameraURI, max_frame: tuple[int, int], *, surfaces: int,
                          camera_id: str = "") -> GstReader:
    """Open a file://, rtsp:// or csi:// camera through NVIDIA's elements; its frames come as DeviceFrames from a
    pool of `surfaces` mapped surfaces (at least the lanes' frames in flight + 2). `camera_id` (where known) names
    the camera in the lines logged while it runs. Refused where this path cannot
    read the camera here (no NVIDIA elements, a container or codec it does not take); another SourceError for the
    source itself."""
    if uri.scheme not in JETSON_ELEMENTS:
        raise Refused(f"{uri.scheme}:// cameras do not go through GStreamer's Jetson decoder",
                      hint="file://, rtsp:// and csi:// do; set decode: cpu for this camera")
    what = describe(uri)
    gst = import_gst()
    missing = missing_elements(gst, JETSON_ELEMENTS[uri.scheme])
    if missing:
        raise Refused(f"{what} needs NVIDIA's GStreamer elements {', '.join(missing)}, which this machine lacks",
                      note="they come with JetPack on a Jetson (nvidia-l4t-gstreamer)",
                      hint="elsewhere set decode: cpu (or auto) for this camera")
    if uri.scheme == "csi":
        description, source = csi_pipeline(uri, device=True), f"sensor {uri.location} by nvarguscamerasrc"
    else:
        if uri.scheme == "file":
            check_video_file(uri.location)          # filesrc would block in open() on a FIFO, for good
        codec, demuxer, size = probe(gst, uri)
        check_frame_size(size, max_frame, f"{what} declares")
        description, source = pipeline_description(uri, codec, demuxer), f"{CODECS[codec]} by nvv4l2decoder (NVDEC)"
    log.info("%s: GStreamer %s", what, scrub(description, uri))
    return GstReader(gst, uri, description, max_frame=max_frame, surfaces=surfaces, source=source,
                     camera_id=camera_id)


class GstReader:
    """A running pipeline whose appsink's BGRx frames are copied once each into mapped surfaces of its own pool,
    handed out as DeviceFrames. `read` returns None at the end of a file, on an error (logged) and when no frame
    came within the read timeout, as the OpenCV reader does. `description` says what decodes (`source`: the codec
    and decoder, or the sensor) and the frames' size, for the decode choice's log line. `pts_ms` is the returned
    frame's buffer PTS as running time (its sample's segment: an MP4's edit list starts it later than 0) in ms,
    None where the buffer has none; docs/protocol.md, "Capture time"."""

    def __init__(self, gst: Any, uri: CameraURI, description: str, *, max_frame: tuple[int, int],
                 surfaces: int, source: str, camera_id: str = "") -> None:
        self.description = f"{gst.version_string()} on a Jetson: {source}"
        self.fps = 30.0
        self.frames = 0                                 # read from the appsink, the dropped ones too
        self.declared_frames = 0
        self.pts_ms: float | None = None                # the stream time of the frame `read` returned last
        self._gst = gst
        self._uri = uri
        self._read_timeout_ms = read_timeout_ms(uri)    # each frame's wait, the camera's `timeout=`
        self._what = describe(uri)
        self._said = f"{camera_id}: {self._what}" if camera_id else self._what      # in lines logged while it runs
        self._surfaces = surfaces
        self._pool: SurfacePool | None = None
        self._wait = SurfaceWait(self._said, lossless=uri.lossless)
        self._problem: SourceError | None = None        # the first error GStreamer posted
        self._closed = False
        self._pipeline = parse(gst, description, uri, bin_only=False)
        self._sink = self._pipeline.get_by_name("sink")
        self._bus = self._pipeline.get_bus()
        try:
            self._first = self._start(max_frame)
        except BaseException:
            self.close()
            raise

    def _start(self, max_frame: tuple[int, int]) -> Any:
        """Play until the first frame, then size the pool from it."""
        gst = self._gst
        if self._pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
            raise self._failed("cannot start")
        sample = self._next((OPEN_TIMEOUT_MS + self._read_timeout_ms) / 1000)
        if sample is None:
            raise self._failed(f"delivered no frame within {OPEN_TIMEOUT_MS + self._read_timeout_ms} ms")
        structure = sample.get_caps().get_structure(0)
        self._width = structure.get_int("width")[1]
        self._height = structure.get_int("height")[1]
        check_frame_size((self._width, self._height), max_frame, f"{self._what} delivers")
        self.description += f", BGRx by nvvidconv (VIC), {self._width}x{self._height}"
        size = sample.get_buffer().get_size()
        if size < 4 * self._width * self._height or size % self._height:
            raise Refused(f"{self._what}: a BGRx frame of {self._width}x{self._height} came in a buffer of {size}"
                          " bytes, which is no whole number of rows", note=structure.to_string(),
                          hint="report it with this line; set decode: cpu for this camera meanwhile")
        self._pitch = size // self._height
        ok, num, den = structure.get_fraction("framerate")
        if ok and num > 0 and den > 0 and 0 < num / den < 1000:
            self.fps = num / den
        if self._uri.scheme == "file":
            known, duration_ns = self._pipeline.query_duration(gst.Format.TIME)
            self.declared_frames = round(duration_ns / 1e9 * self.fps) if known and duration_ns > 0 else 0
        self._pool = SurfacePool(size, self._surfaces, mapped=True)
        return sample

    def read(self) -> DeviceFrame | None:
        """The next frame; None at the end of a file, on an error, or when none came within the read timeout. While
        the lanes hold every surface, a frame is dropped, or a realtime=0 file waits (SurfaceWait)."""
        surface = None
        while surface is None:
            sample, self._first = self._first, None
            if sample is None:
                sample = self._next(self._read_timeout_ms / 1000)
            if sample is None:
                self._ended()
                return None
            buffer = sample.get_buffer()
            if buffer.get_size() != self._pitch * self._height:
                log.warning("%s changed its frames to %s: not read further (a live camera reconnects)", self._said,
                            sample.get_caps().to_string())
                return None
            self.frames += 1                        # dropped ones too: the file's length check counts them
            surface = self._wait.acquire(self._pool)
        copy_buffer(buffer, surface.host)
        self.pts_ms = running_time_ms(self._gst, sample, buffer)
        return surface.frame(pixel_format="bgrx", width=self._width, height=self._height, pitch=self._pitch,
                             plane_offsets=(0,), matrix="bt601", full_range=False, ready=None)

    @property
    def dropped(self) -> int:
        """Frames dropped because every surface was still held (SurfaceWait)."""
        return self._wait.dropped

    def close(self) -> None:
        """Stop the pipeline; the pool is retired: freed once the lanes gave every surface back (SurfacePool.retire)."""
        if self._closed:
            return
        self._closed = True
        self._first = None
        self._pipeline.set_state(self._gst.State.NULL)
        if self._pool is not None:
            self._pool.retire(self._said)

    def _next(self, timeout_s: float) -> Any:
        """The next sample; None at the end of the stream, on an error on the bus, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            sample = self._sink.emit("try-pull-sample", int(max(0.0, min(PULL_SLICE_S, left)) * self._gst.SECOND))
            if sample is not None:
                return sample
            if self._sink.get_property("eos") or self._read_bus() or left <= PULL_SLICE_S:
                return None

    def _read_bus(self) -> bool:
        """Empty the bus (nothing else there is kept), keeping its first error; True once there was one."""
        while (message := self._bus.pop()) is not None:
            if self._problem is None and message.type == self._gst.MessageType.ERROR:
                self._problem = gst_error(message, self._uri)
        return self._problem is not None

    def _ended(self) -> None:
        """Say why no frame came: the end of the file (debug), GStreamer's error, or the read timeout."""
        if self._read_bus():
            log.warning("%s: %s", self._said, self._problem.render().replace("\n", "; "))
        elif self._sink.get_property("eos"):
            log.debug("%s: end of stream after %d frames", self._said, self.frames)
        else:
            log.warning("%s: no frame within %d ms", self._said, self._read_timeout_ms)

    def _failed(self, what: str) -> SourceError:
        self._read_bus()
        return self._problem or SourceError(f"{self._what} {what}", hint="`GST_DEBUG=3 edge run ...` shows what"
                                                                         " GStreamer's elements said")


def running_time_ms(gst: Any, sample: Any, buffer: Any) -> float | None:
    """The running time of a sample's buffer PTS in ms; None where the buffer has none (GST_CLOCK_TIME_NONE) or it
    lies outside the sample's segment (gst_segment_to_running_time gives NONE then)."""
    segment = sample.get_segment()
    pts = buffer.pts if segment is None else segment.to_running_time(gst.Format.TIME, buffer.pts)
    return pts / 1e6 if 0 <= pts < gst.CLOCK_TIME_NONE else None


class _MapInfo(ctypes.Structure):
    """GstMapInfo as gst_buffer_map fills it (gst/gstmemory.h; unchanged since GStreamer 1.0)."""

    _fields_ = [("memory", ctypes.c_void_p), ("flags", ctypes.c_int), ("data", ctypes.c_void_p),
                ("size", ctypes.c_size_t), ("maxsize", ctypes.c_size_t), ("user_data", ctypes.c_void_p * 4),
                ("_gst_reserved", ctypes.c_void_p * 4)]


@functools.cache
def _libgstreamer() -> Any:
    library = ctypes.CDLL("libgstreamer-1.0.so.0")          # already loaded by PyGObject's Gst
    library.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo), ctypes.c_int]
    library.gst_buffer_map.restype = ctypes.c_int
    library.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo)]
    library.gst_buffer_unmap.restype = None
    return library


def copy_buffer(buffer: Any, destination: Any) -> int:
    """Copy a Gst.Buffer's bytes into `destination` (a flat uint8 numpy array, at least as large): the one copy of
    a frame. PyGObject's Buffer.map hands the bytes over as a new bytes object (a copy of its own), so the buffer
    is mapped through libgstreamer itself, at its address (hash() of a PyGObject boxed value)."""
    library = _libgstreamer()
    info = _MapInfo()
    if not library.gst_buffer_map(hash(buffer), ctypes.byref(info), 1):        # GST_MAP_READ
        raise SourceError("a GStreamer buffer could not be mapped for reading", note=f"{buffer.get_size()} bytes")
    try:
        if info.size > destination.nbytes:
            raise SourceError(f"a GStreamer buffer of {info.size} bytes does not fit its {destination.nbytes}-byte"
                              " surface")
        ctypes.memmove(destination.ctypes.data, info.data, info.size)
        return int(info.size)
    finally:
        library.gst_buffer_unmap(hash(buffer), ctypes.byref(info))


