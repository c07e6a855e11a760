"""A camera's CPU readers behind one interface (`Reader`): OpenCV's VideoCapture for files, RTSP (FFmpeg), V4L2 and
CSI (GStreamer), a synthetic test pattern; `open_reader` opens the one a URI names. The hardware readers are
edge/pipeline/nvdec.py's and gstreamer_reader.py's; the camera thread around any of them is edge/pipeline/cameras.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge.config.cameras import MAX_FRAME, CameraURI, parse_size
from edge.errors import SourceError
from edge.opencv import import_cv2, route_media_logs
from edge.pipeline.gstreamer import csi_pipeline
from edge.pipeline.sources import (
    OPEN_TIMEOUT_MS,
    check_frame_size,
    check_video_file,
    ffmpeg_options,
    read_timeout_ms,
    rtsp_transport,
)

if TYPE_CHECKING:
    from edge.gpu.surfaces import DeviceFrame


class Reader(Protocol):
    """What a camera reads frames from (this module's readers, edge/pipeline/nvdec.py's, gstreamer_reader.py's)."""

    fps: float
    frames: int                    # frames read since it opened
    declared_frames: int           # the frame count the file's header declares; 0 when unknown or live

    @property
    def pts_ms(self) -> float | None:
        """The stream time of the frame `read` returned last, in ms; None where it has none (docs/protocol.md,
        "Capture time": an RTSP camera's t_capture_ns is mapped from it)."""

    def read(self) -> np.ndarray | DeviceFrame | None: ...

    def close(self) -> None: ...


class _CvReader:
    """A cv2.VideoCapture (file, V4L2, RTSP, GStreamer) behind the reader interface."""

    def __init__(self, capture: Any, what: str, max_frame: tuple[int, int]) -> None:
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {what}", hint="`edge run --log-level debug` shows what FFmpeg and OpenCV"
                                                           " said about it")
        declared = (int(capture.get(3)), int(capture.get(4)))    # cv2.CAP_PROP_FRAME_WIDTH, _HEIGHT; 0 when unknown
        try:
            check_frame_size(declared, max_frame, f"{what} declares")
        except SourceError:
            capture.release()
            raise
        self._capture = capture
        fps = float(capture.get(5))  # cv2.CAP_PROP_FPS
        self.fps = fps if 0 < fps < 1000 else 30.0
        self.frames = 0
        declared = float(capture.get(7))  # cv2.CAP_PROP_FRAME_COUNT: -1, 0 or NaN when unknown
        self.declared_frames = int(declared) if 0 < declared < 1e9 else 0

    @property
    def capture(self) -> Any:
        """The cv2.VideoCapture, for its properties (a packet reader's codec and extradata)."""
        return self._capture

    @property
    def pts_ms(self) -> float:
        """The last frame's stream time in ms (CAP_PROP_POS_MSEC; 0 for a stream without timestamps)."""
        return float(self._capture.get(0))    # cv2.CAP_PROP_POS_MSEC

    def read(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        if not ok:
            return None
        self.frames += 1
        return image

    def close(self) -> None:
        self._capture.release()


class _PatternReader:
    """Synthetic colour bars with a moving box; `frames` limits the length."""

    def __init__(self, uri: CameraURI, max_frame: tuple[int, int]) -> None:
        self.fps = float(uri.params.get("fps", 30.0))
        w, h = parse_size(uri.params.get("size", "640x480"))
        check_frame_size((w, h), max_frame, f"test pattern {uri.location} has")
        self._limit = uri.params.get("frames")
        self._n = 0
        self.frames = 0
        self.declared_frames = 0
        self.pts_ms = None                  # a pattern has no stream time
        bars = np.array([[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0],
                         [255, 0, 255], [0, 0, 255], [255, 0, 0], [0, 0, 0]], np.uint8)
        self._base = np.repeat(bars, -(-w // len(bars)), axis=0)[:w][None].repeat(h, axis=0).copy()

    def read(self) -> np.ndarray | None:
        if self._limit is not None and self._n >= self._limit:
            return None
        image = self._base.copy()
        h, w = image.shape[:2]
        side = max(8, h // 8)
        x = (self._n * 4) % max(1, w - side)
        image[h // 2 - side // 2:h // 2 + side // 2, x:x + side] = 128
        self._n += 1
        self.frames = self._n
        return image

    def close(self) -> None:
        self._n = 0


def open_reader(uri: CameraURI, max_frame: tuple[int, int] = MAX_FRAME, *, packets: bool = False) -> Reader:
    """Open the source behind `uri`; SourceError says why it failed and what to check. `packets` (file:// and
    rtsp:// only): read the compressed packets, not images (OpenCV's raw mode, FFmpeg's packets, H.264 and H.265
    in Annex B form) for a hardware decoder (edge/pipeline/nvdec.py)."""
    if uri.scheme == "test":
        return _PatternReader(uri, max_frame)
    if uri.scheme == "file":
        check_video_file(uri.location)
    cv2 = import_cv2()
    route_media_logs(cv2)
    raw = [cv2.CAP_PROP_FORMAT, -1] if packets else []
    if uri.scheme == "file":
        capture = cv2.VideoCapture(uri.location, cv2.CAP_FFMPEG, raw) if packets else cv2.VideoCapture(uri.location)
        return _CvReader(capture, f"video file {uri.location}", max_frame)
    if uri.scheme == "rtsp":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms(uri)]
        with ffmpeg_options.using(rtsp_transport(uri)):
            capture = cv2.VideoCapture(uri.location, cv2.CAP_FFMPEG, params + raw)
        return _CvReader(capture, f"RTSP stream {uri.redacted()}", max_frame)
    if uri.scheme == "v4l2":
        return _open_v4l2(cv2, uri, max_frame)
    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        raise SourceError(f"camera {uri.raw} needs OpenCV with GStreamer, and this OpenCV has none",
                          note=f"cv2 {cv2.__version__} from {cv2.__file__}",
                          hint="on a Jetson use JetPack's OpenCV (python3-opencv) instead of a pip wheel:"
                               " pip uninstall opencv-python-headless; create the venv with --system-site-packages")
    return _CvReader(cv2.VideoCapture(csi_pipeline(uri, device=False), cv2.CAP_GSTREAMER), f"CSI sensor {uri.location}",
                     max_frame)


def _open_v4l2(cv2: Any, uri: CameraURI, max_frame: tuple[int, int]) -> Reader:
    capture = cv2.VideoCapture(uri.location, cv2.CAP_V4L2)
    if "size" in uri.params:
        w, h = parse_size(uri.params["size"])
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
    if "fps" in uri.params:
        capture.set(cv2.CAP_PROP_FPS, uri.params["fps"])
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return _CvReader(capture, f"V4L2 device {uri.location}", max_frame)
