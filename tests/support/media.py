"""Small real videos for camera tests: written with OpenCV (MJPG), or encoded with PyAV (H.264, H.265) from the
demo's vtest.avi, which OpenCV's wheels cannot write."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_video(path: Path, frames: int, size: tuple[int, int] = (160, 120), fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
        cv2.putText(image, str(i), (10, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    return path


def encode_clip(path: Path, encoder: str, frames: int = 20, size: tuple[int, int] = (320, 240),
                fmt: str | None = None) -> Path:
    """The first `frames` frames of vtest.avi at `size` and 10 fps, encoded with PyAV's `encoder` (libx264,
    libx265) into `path` (its container from the suffix, or `fmt`: "h264", "hevc" for an elementary stream);
    pytest.skip where PyAV or the demo video is missing."""
    av = pytest.importorskip("av", reason="encoding a test clip needs PyAV (the dev extra)")
    source = Path(os.environ.get("EDGE_CACHE", Path.home() / ".cache/edge")) / "media/vtest.avi"
    if not source.is_file():
        pytest.skip(f"needs the demo video {source} (edge assets fetch)")
    with av.open(str(source)) as video, av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if encoder == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        for index, frame in enumerate(video.decode(video=0)):
            if index == frames:
                break
            picture = frame.reformat(size[0], size[1], "yuv420p")
            picture.pts = None
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return path
