"""edge/opencv.py: FFmpeg's and OpenCV's log levels for edge's (the routing itself: tests/pipeline/test_cameras.py)."""
from __future__ import annotations

import logging

import pytest

from edge import opencv


@pytest.mark.parametrize("level, ffmpeg, cv", [
    (logging.DEBUG, 24, 4), (logging.INFO, 8, 3), (logging.WARNING, 8, 3), (logging.ERROR, 8, 2)])
def test_media_log_levels_follow_edges_level(level: int, ffmpeg: int, cv: int) -> None:
    assert opencv.media_log_levels(level) == (ffmpeg, cv)  # AV_LOG_*, cv2 LOG_LEVEL_*
