"""What every camera reader keeps to (OpenCV's and FFmpeg's, GStreamer's on a Jetson): the time to open a source and
to read each frame, the largest frame it takes before decoding, and how a hardware reader refuses a camera."""
from __future__ import annotations

from edge.errors import SourceError

OPEN_TIMEOUT_MS = 2000           # a reader opens its source within this, or fails
READ_TIMEOUT_MS = 2000           # and then delivers each frame within this, or the source counts as lost


def check_frame_size(size: tuple[int, int], max_frame: tuple[int, int], what: str) -> None:
    """Refuse a frame (or a declared frame size) over `max_frame` before it is decoded: a file or stream that
    declares 16000x16000 would otherwise cost gigabytes per frame. A size of 0 (not declared) passes."""
    (w, h), (max_w, max_h) = size, max_frame
    if w > max_w or h > max_h:
        raise SourceError(f"{what} frames of {w}x{h}, larger than the {max_w}x{max_h} this camera accepts",
                          hint="set the camera's max_frame_size in the config (up to 8192x8192) if such frames are"
                               " expected; otherwise check the source")


class Refused(SourceError):
    """A hardware decode path cannot read this camera here, through no fault of the source (no library, GPU or
    element for it, a codec or container it does not take): `decode: auto` falls back to the CPU reader with the
    reason, `decode: nvdec` fails with it (edge/pipeline/runtime.py, Decoding)."""
