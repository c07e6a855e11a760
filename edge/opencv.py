"""OpenCV for edge: importing it with an install hint, and tying FFmpeg's and OpenCV's own logs to edge's level.

FFmpeg's log, as OpenCV's FFmpeg backend sets it up: without OPENCV_FFMPEG_LOGLEVEL every FFmpeg error goes
to stderr (one line per damaged macroblock: over 10,000 for the demo video with 3,000 flipped bits); with it,
FFmpeg logs up to that AV_LOG_* level, through OpenCV's callback to stdout. OpenCV reads it when its FFmpeg
backend opens a capture, opencv-python 4.14 only at the first, so edge sets it before it opens its first video.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

from edge.errors import SourceError
from edge.log import get_logger

log = get_logger("opencv")

FFMPEG_LOG_ENV = "OPENCV_FFMPEG_LOGLEVEL"
OPENCV_LOG_ENV = "OPENCV_LOG_LEVEL"
AV_LOG_FATAL = 8
AV_LOG_WARNING = 24
_media_logs_lock = threading.Lock()
_media_logs_routed = False


def import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise SourceError("OpenCV is needed to read cameras and video files, but `import cv2` failed",
                          note=str(exc),
                          hint="pip install 'edge[cv]' on a PC; on a Jetson use JetPack's python3-opencv"
                               " (create the venv with --system-site-packages)") from exc
    return cv2


def media_log_levels(level: int) -> tuple[int, int]:
    """FFmpeg's AV_LOG_* level and OpenCV's own log level for edge's `level` (a `logging` level): FFmpeg's
    warnings and errors and OpenCV's info at debug; otherwise only FFmpeg's fatal errors and OpenCV's
    warnings (at error, OpenCV's errors)."""
    if level <= logging.DEBUG:
        return AV_LOG_WARNING, 4          # cv2.utils.logging.LOG_LEVEL_INFO
    return AV_LOG_FATAL, 2 if level >= logging.ERROR else 3   # LOG_LEVEL_ERROR, LOG_LEVEL_WARNING


def route_media_logs(cv2: Any) -> None:
    """Tie FFmpeg's and OpenCV's logs to edge's log level, once per process, before the first capture opens.
    An OPENCV_FFMPEG_LOGLEVEL or OPENCV_LOG_LEVEL already in the environment is the operator's and stays."""
    global _media_logs_routed
    with _media_logs_lock:
        if _media_logs_routed:
            return
        _media_logs_routed = True
        ffmpeg, opencv = media_log_levels(log.getEffectiveLevel())
        if FFMPEG_LOG_ENV not in os.environ:
            os.environ[FFMPEG_LOG_ENV] = str(ffmpeg)
        logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
        if OPENCV_LOG_ENV not in os.environ and logging_api is not None:
            logging_api.setLogLevel(opencv)
