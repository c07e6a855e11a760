"""NVDEC for real (marked gpu: the device machine, with PyNvVideoCodec 2.2.4 and the clips carried, as
docs/testing.md says): PyNvVideoCodec decodes the H.264 and H.265 clips into pool surfaces, as many frames as PyAV
decoded from them where they were made and the first one byte for byte as PyAV did; that frame converted with the
colour reference (download_bgr) is OpenCV's decode within rounding; a 10-bit stream is refused at open; a looping
camera's frames all go back to the pool."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edge.config.cameras import parse_uri
from edge.gpu import cuda
from edge.gpu.surfaces import DeviceFrame
from edge.pipeline.cameras import Camera, EndOfStream
from edge.pipeline.nvdec import NvdecReader, open_nvdec_reader
from edge.pipeline.runtime import Decoding
from edge.pipeline.sources import Refused
from tests.support import clips

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _pynvvideocodec() -> None:
    pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec 2.2.4 (../shared/device/prepare.sh"
                                                 " pynvvideocodec==2.2.4; pip install 'edge[nvdec]')")


def _open(name: str, query: str = "?realtime=0") -> NvdecReader:
    return open_nvdec_reader(parse_uri(f"file://{clips.clip(name)}{query}"), (7680, 4320), surfaces=4)


@pytest.mark.parametrize("name, size, matrix", [
    ("h264", (768, 576), "bt601"), ("h265", (768, 576), "bt601"), ("h264-1080p", (1920, 1080), "bt709")])
def test_nvdec_decodes_every_frame_the_first_as_pyav_does(name: str, size: tuple[int, int], matrix: str) -> None:
    """The first frame is PyAV's decode byte for byte (H.264/H.265 decoding is exact), the count PyAV's, and each
    frame's pts_ms its own (PacketData.pts in, DecodedFrame.getPTS() out), at the clips' 10 fps from 0."""
    reader = _open(name)
    first = reader.read()
    assert (first.pixel_format, (first.width, first.height), first.matrix, first.full_range) == \
        ("nv12", size, matrix, False)
    nv12, expected = _nv12(first), clips.first_frame(clips.clip(name))
    first.release(None)
    assert nv12.shape == expected.shape and np.array_equal(nv12, expected), \
        f"{np.count_nonzero(nv12 != expected)} of {expected.size} bytes differ from PyAV's decode"
    count, stamps = 1, [reader.pts_ms]
    while (frame := reader.read()) is not None:
        frame.release(None)
        count += 1
        stamps.append(reader.pts_ms)
    assert count == clips.decoded_frames(clips.clip(name)) and reader.dropped == 0
    assert stamps == pytest.approx([index * 1000 / clips.FPS for index in range(count)]), stamps[:8]  # own pts each
    reader.close()


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_the_first_frame_converted_is_opencvs_decode_within_rounding(name: str) -> None:
    """download_bgr (the colour reference, BT.601 limited for these untagged SD clips) against OpenCV's decode of
    the same clip: a conversion's rounding apart (measured with the stand-in: mean 1.05, 99.9th percentile 3); a
    wrong matrix, plane or pitch is far more."""
    reader = _open(name)
    first = reader.read()
    ok, expected = cv2.VideoCapture(str(clips.clip(name))).read()
    assert ok
    difference = np.abs(first.download_bgr().astype(int) - expected.astype(int))
    first.release(None)
    reader.close()
    assert difference.mean() <= 1.5 and np.percentile(difference, 99.9) <= 8, \
        f"mean {difference.mean():.2f}, 99.9th percentile {np.percentile(difference, 99.9)}"


def _nv12(frame: DeviceFrame) -> np.ndarray:
    """The frame's NV12 rows, copied to the host once its ready event completed."""
    rows = frame.height + (frame.height + 1) // 2
    host = np.empty(rows * frame.pitch, np.uint8)
    context = cuda.Context()
    try:
        with context.current():
            frame.ready.wait(None)
            cuda.driver().memcpy_dtoh(host, frame.planes[0])
    finally:
        context.detach()
    return host.reshape(rows, frame.pitch)[:, :frame.width]


def test_a_10_bit_stream_is_refused_at_open() -> None:
    with pytest.raises(Refused, match=r"\(H\.265\) to P016, not NV12"):
        _open("h265-10bit")


def test_a_looping_camera_gives_every_frame_back_to_its_pool(caplog: pytest.LogCaptureFixture) -> None:
    """Two passes of the 1080p clip through a camera and a reader that releases each frame: the indexes run on
    across the loop, no frame is dropped for want of a surface (the reader would warn), the camera stops."""
    path = clips.clip("h264-1080p")
    per_pass = clips.decoded_frames(path)
    camera = Camera("cam", parse_uri(f"file://{path}?realtime=0&loop=1"), on_event=lambda name, details: None,
                    opener=Decoding("cam", "nvdec", 2))
    reader = camera.latest.register()
    seen: list[int] = []

    def consume() -> None:
        last = -1
        try:
            while len(seen) < 2 * per_pass + 10:
                frame = camera.latest.get_after(reader, last, 10)
                assert frame is not None and frame.device is not None
                frame.release(None)
                seen.append(last := frame.index)
        except EndOfStream:
            pass
    thread = threading.Thread(target=consume)
    with caplog.at_level("WARNING", logger="edge.nvdec"):
        thread.start()
        camera.start()
        thread.join(60)
        assert camera.stop(10)
    assert seen == list(range(2 * per_pass + 10))           # lossless (realtime=0): every frame, in order
    assert caplog.messages == []
