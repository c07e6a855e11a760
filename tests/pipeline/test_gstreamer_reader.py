"""The reader of a GStreamer camera on a Jetson (edge/pipeline/gstreamer_reader.py), run for real in this machine's
GStreamer with software stand-ins under NVIDIA's element names (tests/support/fake_jetson.py), on real H.264/H.265
clips and a real RTSP camera, its surfaces on the CUDA stand-in (tests/support/fake_cuda.py): frames arrive in
mapped surfaces, the end of a file and errors behave as OpenCV's reader's do, the pool is bounded and freed once
the lanes gave every surface back.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config.cameras import parse_uri
from edge.errors import SourceError
from edge.pipeline import gstreamer_reader, sources
from edge.pipeline.gstreamer import probe
from edge.pipeline.gstreamer_reader import open_gstreamer_reader, running_time_ms
from edge.pipeline.runtime import Decoding
from tests.conftest import wait_for
from tests.support import clips, fake_cuda, fake_jetson, rtsp
from tests.support.fake_jetson import gst

MAX = (7680, 4320)
CLIP_FRAMES = 20
READ_WAIT_S = 20            # a read timeout no test should wait out


def clip(tmp_path: Path, name: str, encoder: str, frames: int = CLIP_FRAMES, fmt: str | None = None) -> Path:
    return clips.encode(clips.small(encoder, frames), tmp_path / name, fmt=fmt)


@pytest.fixture
def jetson_elements() -> Iterator[Any]:
    """Software stand-ins under NVIDIA's element names for the test (yields Gst)."""
    with fake_jetson.installed() as Gst:
        yield Gst


@pytest.fixture
def ledger(monkeypatch) -> fake_cuda.Ledger:
    return fake_cuda.install(monkeypatch)


def _reference_frames(path: Path) -> list[np.ndarray]:
    """The clip decoded by OpenCV's FFmpeg, BGR: the oracle for what the reader's surfaces hold."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            capture.release()
            return frames
        frames.append(image)


@pytest.mark.parametrize(("name", "codec"), [("a.mp4", "libx264"), ("a.mkv", "libx265")])
def test_frames_arrive_in_mapped_surfaces_until_the_end_of_the_file(jetson_elements, ledger, tmp_path, caplog,
                                                                    monkeypatch, name: str, codec: str) -> None:
    monkeypatch.setattr(sources, "READ_TIMEOUT_MS", READ_WAIT_S * 1000)
    path = clip(tmp_path, name, codec)
    reader = open_gstreamer_reader(parse_uri(f"file://{path}"), MAX, surfaces=3)
    assert (reader.fps, reader.declared_frames) == (10.0, CLIP_FRAMES)
    reference = _reference_frames(path)
    caplog.set_level(logging.DEBUG, "edge.camera")
    for index in range(CLIP_FRAMES):
        frame = reader.read()
        assert (frame.pixel_format, frame.width, frame.height, frame.pitch) == ("bgrx", 320, 240, 1280)
        assert reader.pts_ms == pytest.approx(index * 100)               # the buffer's PTS: the file's 10 fps
        host = ledger.memory[frame.planes[0]] if frame.planes[0] in ledger.memory else None
        assert host is not None, "the frame's plane is not a mapped buffer's device pointer"
        image = host[:240 * 1280].reshape(240, 320, 4)
        assert (image[..., 3] == 255).all()
        difference = np.abs(image[..., :3].astype(int) - reference[index]).mean()
        assert difference < 2.0, f"frame {index} differs from FFmpeg's decode by {difference:.2f} on average"
        assert (frame.download_bgr() == image[..., :3]).all()          # what a CPU engine would read of it
        frame.release(None)
    started = time.monotonic()
    assert reader.read() is None and reader.frames == CLIP_FRAMES                 # the end, as OpenCV's reader ends
    assert time.monotonic() - started < READ_WAIT_S / 2, "the end of the file waited for the read timeout"
    assert "end of stream after 20 frames" in caplog.text
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")


def test_the_letterbox_kernel_reads_the_frame_where_it_lies(jetson_elements, ledger, tmp_path) -> None:
    """The frame's fields are what GpuLetterbox.launch_planes takes: the kernel is launched on the surface's own
    device pointer (no copy before it), and the slot's stream releases the frame after it."""
    from edge.gpu import cuda
    from edge.gpu.letterbox import GpuLetterbox

    reader = open_gstreamer_reader(parse_uri(f"file://{clip(tmp_path, 'a.mp4', 'libx264', frames=3)}"), MAX,
                                   surfaces=3)
    frame = reader.read()
    context = cuda.Context(0)
    with context.current():
        stream, out, pre = cuda.Stream(), cuda.DeviceBuffer(3 * 416 * 416 * 4), GpuLetterbox((1, 3, 416, 416),
                                                                                              np.float32)
        copies = [entry for entry in ledger.trace if entry[0] in ("h2d", "d2h")]
        planes = frame.planes
        box = pre.launch_planes(planes, frame.pitch, frame.width, frame.height, out.pointer, stream,
                                pixel_format=frame.pixel_format)
        frame.release(stream)
        assert ledger.launches[-1][2][0] == planes[0] and planes[0] in ledger.memory     # a mapped surface
        assert box.scale == 416 / 320
        assert [entry for entry in ledger.trace if entry[0] in ("h2d", "d2h")] == copies
        for item in (pre, out, stream):
            item.free()
    context.detach()
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")


def test_the_pool_is_bounded_and_a_frame_with_no_free_surface_is_dropped(jetson_elements, ledger, tmp_path,
                                                                         monkeypatch, caplog) -> None:
    """With every surface held the reader stopped reading, which ended a file camera; NVDEC's reader dropped the
    frame and went on. Both drop it now (one warning), and the file's length check still counts it."""
    monkeypatch.setattr(sources, "ACQUIRE_TIMEOUT_S", 0.01)
    reader = open_gstreamer_reader(parse_uri(f"file://{clip(tmp_path, 'a.mp4', 'libx264')}"), MAX, surfaces=2)
    first, second = reader.read(), reader.read()
    assert ledger.kinds()["mapped host buffer"] == 2 and first.planes != second.planes
    pointer = first.planes
    first.release(None)
    third = reader.read()
    assert third.planes == pointer                                  # the released surface, written again
    caplog.set_level(logging.DEBUG, "edge.camera")
    assert reader.read() is None                                    # both out: the rest dropped, to the end
    assert (reader.frames, reader.dropped) == (CLIP_FRAMES, CLIP_FRAMES - 3)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"video file {tmp_path}/a.mp4: all 2 frame surfaces are still held after 0.0 s: decoded frame dropped (1 so"
        " far); a lane keeps frames longer than its in_flight, or frames are not released"]
    assert "decoded frame dropped (17 so far)" in caplog.text and "end of stream after 20 frames" in caplog.text
    second.release(None)
    third.release(None)
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")


def test_a_lossless_file_waits_for_a_surface_and_drops_nothing(jetson_elements, ledger, tmp_path, monkeypatch,
                                                               caplog) -> None:
    monkeypatch.setattr(sources, "ACQUIRE_TIMEOUT_S", 0.01)
    reader = open_gstreamer_reader(parse_uri(f"file://{clip(tmp_path, 'a.mp4', 'libx264', frames=3)}?realtime=0"),
                                   MAX, surfaces=2)
    held = [reader.read(), reader.read()]
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(reader.read()))
    thread.start()
    wait_for(lambda: "waiting for the lanes, since realtime=0 drops no frame" in caplog.text, READ_WAIT_S,
             "the reader to say that it waits")
    assert thread.is_alive() and not got
    held.pop(0).release(None)                                       # a lane gives one back
    thread.join(READ_WAIT_S)
    assert got[0] is not None and reader.dropped == 0 and reader.frames == 3
    for frame in got + held:
        frame.release(None)
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")


def test_a_closed_reader_frees_its_surfaces_once_the_lanes_gave_them_back(jetson_elements, ledger, tmp_path) -> None:
    reader = open_gstreamer_reader(parse_uri(f"file://{clip(tmp_path, 'a.mp4', 'libx264')}"), MAX, surfaces=3)
    held = reader.read()
    reader.close()
    assert ledger.kinds()["mapped host buffer"] == 3                # a lane still reads `held`: nothing freed yet
    assert held.width == 320
    held.release(None)
    wait_for(lambda: not ledger.live, what="the surfaces freed")


def test_a_frame_held_past_the_wait_is_refused_not_read_from_freed_memory(jetson_elements, ledger, tmp_path,
                                                                         monkeypatch, caplog) -> None:
    from edge.errors import UsageError

    monkeypatch.setattr("edge.gpu.surfaces.RETIRE_S", 0.1)
    reader = open_gstreamer_reader(parse_uri(f"file://{clip(tmp_path, 'a.mp4', 'libx264')}"), MAX, surfaces=3)
    held = reader.read()
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")
    assert "1 of its 3 frame surfaces still held 0 s after it closed; freed all the same" in caplog.text
    with pytest.raises(UsageError, match="after its surface pool was freed"):
        _ = held.planes
    held.release(None)


def test_frames_over_max_frame_are_refused_before_a_surface_is_taken(jetson_elements, ledger, tmp_path) -> None:
    container = clip(tmp_path, "a.mp4", "libx264", frames=3)
    with pytest.raises(SourceError, match=r"a.mp4 declares frames of 320x240, larger than the 160x120"):
        open_gstreamer_reader(parse_uri(f"file://{container}"), (160, 120), surfaces=3)
    elementary = clip(tmp_path, "a.264", "libx264", frames=3, fmt="h264")      # its size shows only once decoded
    with pytest.raises(SourceError, match=r"a.264 delivers frames of 320x240, larger than the 160x120"):
        open_gstreamer_reader(parse_uri(f"file://{elementary}"), (160, 120), surfaces=3)
    assert ledger.allocations == 0


@pytest.mark.parametrize("kind", ["a FIFO", "a missing file", "a character device", "a directory"])
def test_a_file_camera_that_is_no_video_file_fails_at_once_and_never_blocks(jetson_elements, ledger, tmp_path,
                                                                           kind: str) -> None:
    """filesrc blocks in open() on a FIFO until a writer comes, and with `decode: auto` on a Jetson the daemon's
    start (or a reload) hung there. The file is checked before GStreamer sees it, as the CPU reader checks it: a
    SourceError of the source (not a refusal, so auto does not fall back to the CPU and chooses nothing)."""
    fifo = tmp_path / "cam.mp4"
    os.mkfifo(fifo)
    path, says = {"a FIFO": (fifo, "is not a regular file but a FIFO"),
                  "a missing file": (tmp_path / "gone.mp4", "does not exist"),
                  "a character device": (Path("/dev/zero"), "is not a regular file but a character device"),
                  "a directory": (tmp_path, "is not a regular file but a directory")}[kind]
    decoding = Decoding("front", "auto", in_flight=1)
    failed: list[SourceError] = []

    def open_camera() -> None:
        try:
            decoding(parse_uri(f"file://{path}"), MAX)
        except SourceError as exc:
            failed.append(exc)

    thread = threading.Thread(target=open_camera, daemon=True)
    thread.start()
    thread.join(READ_WAIT_S)
    if thread.is_alive():
        with open(fifo, "wb"):                  # a writer comes and goes: the blocked open() returns
            pass
        thread.join(READ_WAIT_S)
        pytest.fail(f"the open of {kind} blocked for {READ_WAIT_S} s")
    assert len(failed) == 1 and type(failed[0]) is SourceError, failed
    assert says in failed[0].what and str(path) in failed[0].what and "file://" in failed[0].hint
    assert decoding.chosen is None and ledger.allocations == 0


def test_a_truncated_file_ends_early_for_the_camera_to_report(jetson_elements, ledger, tmp_path) -> None:
    from edge.pipeline.cameras import ended_short

    path = clip(tmp_path, "a.mkv", "libx264")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) * 4 // 5])
    reader = open_gstreamer_reader(parse_uri(f"file://{path}"), MAX, surfaces=3)
    while (frame := reader.read()) is not None:
        frame.release(None)
    assert reader.declared_frames == CLIP_FRAMES and 0 < reader.frames < CLIP_FRAMES
    assert ended_short(reader.frames, reader.declared_frames)       # the camera's warning, as for OpenCV's reader
    reader.close()


def test_files_gstreamer_cannot_play_are_clear_errors_at_once(jetson_elements, ledger, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gstreamer_reader, "OPEN_TIMEOUT_MS", 60_000)          # an error must not wait for the timeout
    garbage = tmp_path / "noise.264"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(SourceError) as info:
        open_gstreamer_reader(parse_uri(f"file://{garbage}"), MAX, surfaces=3)
    assert info.value.what == f"video file {garbage}: No valid frames found before end of stream"
    assert info.value.note.startswith("h264parse: ") and "GST_DEBUG=3" in info.value.hint
    cut = clip(tmp_path, "cut.mp4", "libx264")                         # PyAV writes the index (moov) last
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) * 4 // 5])
    with pytest.raises(SourceError, match="cut.mp4: This file contains no playable streams"):
        open_gstreamer_reader(parse_uri(f"file://{cut}"), MAX, surfaces=3)
    assert ledger.allocations == 0


def test_a_stream_that_changes_its_frame_size_is_not_read_further(jetson_elements, ledger, tmp_path, caplog) -> None:
    path = tmp_path / "change.264"
    small = clips.encode(clips.small("libx264", 5, (160, 120)), tmp_path / "small.264", fmt="h264")
    path.write_bytes(clip(tmp_path, "a.264", "libx264", frames=5, fmt="h264").read_bytes() + small.read_bytes())
    reader = open_gstreamer_reader(parse_uri(f"file://{path}"), MAX, surfaces=3, camera_id="front")
    sizes = []
    while (frame := reader.read()) is not None:
        sizes.append((frame.width, frame.height))
        frame.release(None)
    assert sizes == [(320, 240)] * 5
    assert f"front: video file {path} changed its frames to video/x-raw, width=(int)160, height=(int)120" in \
        caplog.text                                                 # the camera named, where the reader knows it
    reader.close()


def test_copy_buffer_copies_the_bytes_once_and_refuses_a_small_surface() -> None:
    Gst = gst()
    data = bytes(range(256)) * 4
    buffer = Gst.Buffer.new_wrapped(data)
    surface = np.zeros(2048, np.uint8)
    assert gstreamer_reader.copy_buffer(buffer, surface) == 1024
    assert surface[:1024].tobytes() == data and not surface[1024:].any()
    with pytest.raises(SourceError, match="a GStreamer buffer of 1024 bytes does not fit its 1000-byte surface"):
        gstreamer_reader.copy_buffer(buffer, np.zeros(1000, np.uint8))


@pytest.fixture
def rtsp_camera(request) -> Iterator[tuple[str, str, Any]]:
    """A real RTSP camera on 127.0.0.1 (tests/support/rtsp.py) with a video stream of the codec the test names and
    an Opus audio stream; yields (URI with credentials, codec, the server process)."""
    from tests.conftest import free_port

    stream = rtsp.media(request.param, audio=True)
    rtsp.require(stream)
    port = free_port()
    server = rtsp.serve(port, stream, shared=False)
    try:
        yield f"rtsp://admin:s3cret@127.0.0.1:{port}/live", request.param, server
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("rtsp_camera", ["h264", "h265"], indirect=True)
def test_an_rtsp_camera_decodes_into_surfaces_and_is_lost_when_it_goes(jetson_elements, ledger, rtsp_camera,
                                                                       caplog) -> None:
    url, codec, server = rtsp_camera
    uri = parse_uri(url)
    assert probe(jetson_elements, uri) == (codec, None, (0, 0))            # from the SDP
    caplog.set_level(logging.INFO, "edge.camera")
    reader = open_gstreamer_reader(uri, MAX, surfaces=3)
    stamps = []
    for _ in range(5):
        frame = reader.read()
        assert (frame.pixel_format, frame.width, frame.height) == ("bgrx", 320, 240)
        stamps.append(reader.pts_ms)
        frame.release(None)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps == pytest.approx([100] * 4, abs=5), stamps                # the server's 10 fps, as rtspsrc stamped
    assert "admin:***@127.0.0.1" in caplog.text and "s3cret" not in caplog.text
    server.kill()
    server.wait()
    while (frame := reader.read()) is not None:                          # what was under way when it went
        frame.release(None)
    reader.close()
    wait_for(lambda: not ledger.live, what="the surfaces freed")
    assert "s3cret" not in caplog.text


def test_a_buffer_without_a_usable_pts_gives_none(jetson_elements) -> None:
    gst = jetson_elements
    segment = gst.Segment()
    segment.init(gst.Format.TIME)
    segment.start = 200_000_000                                           # an MP4's edit list: pts 200 ms is 0
    caps = gst.Caps.from_string("video/x-raw")

    def at(pts: int) -> float | None:
        buffer = gst.Buffer.new()
        buffer.pts = pts
        return running_time_ms(gst, gst.Sample.new(buffer, caps, segment, None), buffer)

    assert [at(pts) for pts in (200_000_000, 1_700_000_000, gst.CLOCK_TIME_NONE, 100_000_000)] == [0.0, 1500.0,
                                                                                                     None, None]


def test_an_rtsp_camera_that_is_not_there_is_a_clear_error_without_its_password(jetson_elements) -> None:
    from tests.conftest import free_port

    with pytest.raises(SourceError) as info:
        open_gstreamer_reader(parse_uri(f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/live"), MAX, surfaces=3)
    assert info.value.what.startswith("RTSP stream rtsp://admin:***@127.0.0.1:")
    assert info.value.what.endswith("/live: Could not open resource for reading and writing.")
    assert "s3cret" not in str(info.value)
    assert "percent-encoded" not in info.value.hint


@pytest.mark.parametrize("password", ["p@ss", "p/ss"])
def test_an_rtsp_password_with_a_raw_at_or_slash_gets_the_hint_to_percent_encode_it(jetson_elements, ledger,
                                                                                   password: str) -> None:
    """rtspsrc ends the credentials at the first '@' and the host at the first '/': GStreamer said only "Unhandled
    error" or "Could not open resource". Percent-encoded, the same password opens the camera."""
    from urllib.parse import quote

    from tests.conftest import free_port

    stream = rtsp.media("h264")
    rtsp.require(stream)
    port = free_port()
    server = rtsp.serve(port, stream, shared=False)
    try:
        with pytest.raises(SourceError) as info:
            open_gstreamer_reader(parse_uri(f"rtsp://admin:{password}@127.0.0.1:{port}/live"), MAX, surfaces=3)
        assert info.value.hint.startswith("the user name or password holds a raw '@' or '/', which GStreamer's"
                                          " rtspsrc cannot parse: write it percent-encoded (@ as %40, / as %2F")
        assert password not in info.value.render()
        reader = open_gstreamer_reader(parse_uri(f"rtsp://admin:{quote(password, safe='')}@127.0.0.1:{port}/live"),
                                       MAX, surfaces=3)
        reader.read().release(None)
        reader.close()
    finally:
        server.kill()
        server.wait()
    wait_for(lambda: not ledger.live, what="the surfaces freed")


@pytest.mark.jetson
def test_on_a_jetson_nvdec_frames_are_letterboxed_in_place_as_the_cpu_does() -> None:
    """On the board, with NVIDIA's elements and CUDA: JetPack's 1080p H.264 sample decodes into mapped surfaces, and
    the letterbox kernel, reading each frame where it lies, writes what the CPU letterbox makes of the same pixels
    (fp32: exactly, docs/gpu.md section 3); the pixels are those FFmpeg decodes, up to VIC's colour conversion."""
    import cv2

    from edge.cli.selftest import DECODE_CLIP
    from edge.gpu import cuda
    from edge.gpu.letterbox import GpuLetterbox
    from edge.letterbox import letterbox_into

    if not DECODE_CLIP.is_file():
        pytest.skip(f"needs {DECODE_CLIP} (sudo apt-get install nvidia-l4t-jetson-multimedia-api)")
    reader = open_gstreamer_reader(parse_uri(f"file://{DECODE_CLIP}"), MAX, surfaces=3)
    capture = cv2.VideoCapture(str(DECODE_CLIP))
    context = cuda.Context(0)
    shape = (1, 3, 416, 416)
    try:
        with context.current():
            pre, stream = GpuLetterbox(shape, np.float32), cuda.Stream()
            out, host = cuda.DeviceBuffer(int(np.prod(shape)) * 4), cuda.HostBuffer(shape, np.float32)
            want = np.empty(shape, np.float32)
            for index in range(10):
                frame = reader.read()
                assert (frame.pixel_format, frame.width, frame.height) == ("bgrx", 1920, 1080)
                pre.launch_planes(frame.planes, frame.pitch, frame.width, frame.height, out.pointer, stream,
                                  pixel_format="bgrx")
                pixels = frame.download_bgr()                   # the same surface, read by the host meanwhile
                frame.release(stream)
                out.download(host.array, stream)
                stream.synchronize()
                letterbox_into(pixels, want)
                assert np.abs(host.array - want).max() == 0, f"frame {index}"
                ok, decoded = capture.read()
                assert ok and np.abs(pixels.astype(int) - decoded).mean() < 3.0, f"frame {index}"
            for item in (pre, stream, out, host):
                item.free()
    finally:
        reader.close()
        capture.release()
        context.detach()
