"""NVDEC reader (edge/pipeline/nvdec.py) on real H.264/H.265 clips, decoded for real by PyAV behind the
PyNvVideoCodec stand-in (tests/support/fake_nvcodec.py) into the CUDA stand-in's memory: every frame, bit for bit
against PyAV's own decode; each frame's stream time (pts_ms); the decoder's stream; the colour rules; end of file,
loop, reconnect; refusals; sizes; pool exhaustion and the pool's release after close. Which reader a camera
gets: test_runtime_decoding.py."""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import cv2
import numpy as np
import pytest

from edge.config.cameras import parse_uri
from edge.errors import SourceError
from edge.gpu.surfaces import DeviceFrame
from edge.pipeline import nvdec, readers, sources
from edge.pipeline.cameras import Camera, EndOfStream, Frame
from edge.pipeline.nvdec import NvdecReader, open_nvdec_reader
from edge.pipeline.runtime import Decoding
from edge.pipeline.sources import Refused
from tests.conftest import free_port, wait_for
from tests.support import clips, fake_cuda, rtsp
from tests.support.clips import write_video


def reference_nv12(path: Path) -> list[np.ndarray]:
    """PyAV's own decode of every frame, as NV12 (luma rows, then interleaved chroma rows)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="nv12") for frame in container.decode(video=0)]


def surface_bytes(frame: DeviceFrame) -> np.ndarray:
    """What the frame's surface holds (the stand-in's device memory), NV12 rows as a decoder writes them."""
    rows = frame.height + (frame.height + 1) // 2
    return fake_cuda.ledger.region(frame.planes[0], frame.pitch * rows).reshape(rows, frame.pitch)[:, :frame.width]


def open_nvdec(path: Path, *, in_flight: int = 2, max_frame: tuple[int, int] = (7680, 4320),
               query: str = "?realtime=0", camera_id: str = "") -> NvdecReader:
    return open_nvdec_reader(parse_uri(f"file://{path}{query}"), max_frame, surfaces=in_flight + 2,
                             camera_id=camera_id)


def read_all(reader: NvdecReader, check: Any = None) -> int:
    count = 0
    while (frame := reader.read()) is not None:
        if check is not None:
            check(count, frame)
        frame.release(None)
        count += 1
    return count


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_every_frame_is_decoded_into_a_surface_bit_for_bit(nvc: ModuleType, cache: Path, name: str) -> None:
    path = clips.clip(name, cache)
    expected = reference_nv12(path)
    reader = open_nvdec(path)

    def check(index: int, frame: DeviceFrame) -> None:
        assert (frame.pixel_format, frame.width, frame.height, frame.pitch) == ("nv12", 768, 576, 768)
        assert frame.planes[1] - frame.planes[0] == 768 * 576 and frame.ready is not None
        assert np.array_equal(surface_bytes(frame), expected[index]), f"frame {index} differs from PyAV's"

    assert read_all(reader, check) == len(expected) == clips.decoded_frames(path) == reader.frames
    assert np.array_equal(clips.first_frame(path), expected[0])         # what the gpu tier compares NVDEC with
    assert reader.read() is None                            # stays at the end
    assert nvc.decoders[0].packets[-1] == b""               # the end of the stream flushed the delayed frames
    reader.close()
    assert fake_cuda.ledger.kinds() == {}                   # pool, events, stream and context all freed


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_each_frame_carries_its_own_stream_time_through_the_decoder(nvc: ModuleType, cache: Path, name: str) -> None:
    """The packets' pts go into PacketData.pts (µs) and come back with the decoded frames: `pts_ms` is the returned
    frame's, not the last packet read (the decoder holds frames back, so that one is ahead)."""
    reader, stamps = open_nvdec(path := clips.clip(name, cache)), []
    read_all(reader, lambda index, frame: stamps.append(reader.pts_ms))
    with av.open(str(path)) as container:                  # PyAV's frames in display order, at vtest's 10 fps
        assert stamps == pytest.approx([float(f.pts * f.time_base * 1000) for f in container.decode(video=0)])
    assert nvc.decoders[0].given_pts[:3] == [0, 100_000, 200_000]          # in µs
    reader.close()


def test_a_packet_without_a_usable_stream_time_goes_in_as_none() -> None:
    given = [0.0, 100.0, 33.3667, None, float("nan"), float("inf"), -0.5, 1e300, 9.1e12]    # 9.1e12: over 2^53 µs
    assert [nvdec.packet_pts(ms) for ms in given] == [0, 100_000, 33_367, -1, -1, -1, -1, -1, -1]   # int64 µs
    assert [nvdec.frame_pts_ms(pts) for pts in (0, 33_367, -1)] == [0.0, 33.367, None]


@pytest.mark.parametrize("bad", [float("nan"), -40.0])
def test_packets_without_usable_stream_times_give_frames_without_pts_ms(nvc: ModuleType, cache: Path, bad: float,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What OpenCV may report as a packet's time (NaN, negative) goes in as NO_PTS and comes out as None, which the
    camera's StreamClock counts as untimed (test_clock.py)."""
    monkeypatch.setattr(readers._CvReader, "pts_ms", property(lambda self: bad))
    reader, stamps = open_nvdec(clips.clip("h264", cache)), []
    assert read_all(reader, lambda index, frame: stamps.append(reader.pts_ms)) == 40
    assert set(stamps) == {None} and set(nvc.decoders[0].given_pts[:-1]) == {nvdec.NO_PTS}
    reader.close()


@pytest.mark.parametrize("name", ["h264", "h265", "h264-1080p"])
def test_a_frame_on_the_host_is_opencvs_decode_within_rounding(nvc: ModuleType, cache: Path, name: str) -> None:
    """download_bgr (for an engine on the CPU) converts by the frame's matrix and range: within a conversion's
    rounding of OpenCV's decode, which follows the stream's tag too (BT.709 for the 1080p clip; BT.601 there would
    be a mean 2.7 apart, measured)."""
    path = clips.clip(name, cache)
    reader = open_nvdec(path)
    frame = reader.read()
    ok, expected = cv2.VideoCapture(str(path)).read()
    difference = np.abs(frame.download_bgr().astype(int) - expected.astype(int))
    frame.release(None)
    reader.close()
    assert ok and difference.mean() <= 1.5 and np.percentile(difference, 99.9) <= 8, \
        f"mean {difference.mean():.2f}, 99.9th percentile {np.percentile(difference, 99.9)}"


def test_frames_are_copied_on_the_decoders_stream_then_their_event_recorded(nvc: ModuleType, cache: Path) -> None:
    reader = open_nvdec(clips.clip("h264", cache))
    decoder = nvc.decoders[0]
    assert decoder.context == reader._context.handle and decoder.stream == reader._stream.handle
    frames = [reader.read() for _ in range(3)]
    steps = [entry[:2] for entry in fake_cuda.ledger.trace if entry[0] in ("nvdec", "d2d", "record")]
    assert steps == [("nvdec", decoder.stream), ("d2d", decoder.stream), ("d2d", decoder.stream),
                     ("record", decoder.stream)] * 3        # written, copied (luma, chroma), then its event
    readies = [entry[2] for entry in fake_cuda.ledger.trace if entry[0] == "record"]
    assert readies == [frame.ready for frame in frames]     # each frame's own event
    copied = [entry[2] for entry in fake_cuda.ledger.trace if entry[0] == "d2d"]
    assert copied == [plane for frame in frames for plane in frame.planes]
    for frame in frames:
        frame.release(None)
    reader.close()


def test_colour_comes_from_the_stream_else_from_the_size(nvc: ModuleType, cache: Path, tmp_path: Path) -> None:
    hd = open_nvdec(clips.clip("h264-1080p", cache))
    assert (hd.matrix, hd.full_range) == ("bt709", False)
    assert hd.description == ("PyNvVideoCodec 2.2.4: H.264 1920x1080, BT.709 limited range, matrix and range from"
                              " the stream")
    frame = hd.read()
    assert (frame.matrix, frame.full_range, frame.width, frame.height) == ("bt709", False, 1920, 1080)
    frame.release(None)
    hd.close()
    sd = open_nvdec(clips.clip("h265", cache))
    assert (sd.matrix, sd.full_range) == ("bt601", False)
    assert sd.description.endswith("H.265 768x576, BT.601 limited range, assumed: the stream says nothing")
    sd.close()
    untagged = parse_uri(f"file://{clips.clip('h264', cache)}")
    assert nvdec.colour(nvc, untagged, (1280, 720))[:2] == ("bt709", False)     # HD by its rows
    assert nvdec.colour(nvc, untagged, (1280, 719))[:2] == ("bt601", False)
    full = _tagged_clip(tmp_path / "full.mp4", colorspace=5, color_range=2)    # BT.470BG (BT.601), JPEG range
    assert nvdec.colour(nvc, parse_uri(f"file://{full}"), (64, 64)) == ("bt601", True, "BT.601 full range, matrix"
                                                                        " and range from the stream")
    rtsp = parse_uri("rtsp://127.0.0.1:1/live")                                 # never probed: the size says
    assert nvdec.colour(nvc, rtsp, (1920, 1080)) == ("bt709", False, "BT.709 limited range, assumed: the stream"
                                                                      " says nothing")


def _tagged_clip(path: Path, *, colorspace: int, color_range: int) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p" if color_range == 1 else "yuvj420p"
        context = stream.codec_context                  # all three codes set: the MP4 muxer writes a `colr` box
        context.colorspace, context.color_range = colorspace, color_range
        context.color_primaries, context.color_trc = 5, 6               # BT.470BG, SMPTE 170M
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")
                                  .reformat(format=stream.pix_fmt)))
        out.mux(stream.encode(None))
    return path


def test_a_file_pynvvideocodecs_demuxer_cannot_read_is_refused(nvc: ModuleType, cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(filename: str) -> None:              # the 2.2.4 wheel's message, measured
        raise nvc.PyNvVCException('CreateFormatContext : \nError code : -1094995529\nError Type : avformat_open_input'
                                  '(&ctx, szFilePath, NULL, NULL) returned error " Invalid data found when processing'
                                  ' input"\nat /project/src/VideoCodecSDKUtils/helper_classes/Utils/FFmpegDemuxer.h')
    monkeypatch.setattr(nvc, "CreateDemuxer", refuse)
    path = clips.clip("h264", cache)
    with pytest.raises(Refused) as refused:
        open_nvdec(path)
    assert refused.value.what == f"PyNvVideoCodec's demuxer cannot open video file {path}"
    assert refused.value.note.startswith("CreateFormatContext : Error code : -1094995529 Error Type : avformat_open_")
    assert fake_cuda.ledger.kinds() == {}


def test_annex_b_parameter_sets_from_the_extradata_go_first(nvc: ModuleType, cache: Path, tmp_path: Path) -> None:
    """An elementary stream (and RTSP, from its SDP) has its SPS/PPS in the extradata: the decoder gets them first."""
    raw = tmp_path / "clip.h264"
    with av.open(str(clips.clip("h264", cache))) as source, av.open(str(raw), "w", format="h264") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    reader = open_nvdec(raw)
    first = nvc.decoders[0].packets[0]
    assert first.startswith(b"\0\0\0\1\x67") or first.startswith(b"\0\0\1\x67")     # an SPS, H.264 NAL type 7
    assert read_all(reader) == len(reference_nv12(raw))
    reader.close()


@pytest.mark.parametrize("maker, fourcc", [
    (lambda cache, tmp: cache / clips.VTEST, "MP43"),                         # MS-MPEG4 v3, the demo video
    (lambda cache, tmp: write_video(tmp / "mjpeg.avi", 3), "MJPG")])
def test_a_codec_other_than_h264_or_h265_is_refused_with_a_hint(nvc: ModuleType, cache: Path, tmp_path: Path,
                                                                 maker: Any, fourcc: str) -> None:
    path = maker(cache, tmp_path)
    with pytest.raises(Refused) as refused:
        open_nvdec(path)
    assert refused.value.what == (f"video file {path} is coded as {fourcc!r}, not H.264 or H.265: NVDEC is used for"
                                  " those only")
    assert "decode: cpu" in refused.value.hint and "re-encode" in refused.value.hint
    assert nvc.decoders == [] and fake_cuda.ledger.kinds() == {}


def test_a_10_bit_stream_is_refused_at_open(nvc: ModuleType, cache: Path) -> None:
    path = clips.clip("h265-10bit", cache)
    with pytest.raises(Refused) as refused:
        open_nvdec(path)
    assert refused.value.what == (f"NVDEC decodes video file {path} (H.265) to P016, not NV12: a 10-bit or 4:2:2/4:4:4"
                                  " stream, which edge does not take from NVDEC")
    assert fake_cuda.ledger.kinds() == {}


def test_a_codec_this_gpu_has_no_decoder_for_is_refused_at_open(nvc: ModuleType, cache: Path) -> None:
    nvc.UNSUPPORTED.add(nvc.cudaVideoCodec.HEVC)
    path = clips.clip("h265", cache)
    with pytest.raises(Refused) as refused:
        open_nvdec(path)
    assert refused.value.what == f"NVDEC refused video file {path} (H.265)"
    assert refused.value.note == "Codec not supported on this GPU" and "decode: cpu" in refused.value.hint
    assert fake_cuda.ledger.kinds() == {}


def test_frames_over_max_frame_size_are_refused_before_decoding(nvc: ModuleType, cache: Path) -> None:
    path = clips.clip("h264", cache)
    with pytest.raises(SourceError) as refused:
        open_nvdec(path, max_frame=(640, 480))
    assert refused.value.what == (f"video file {path} declares frames of 768x576, larger than the 640x480 this camera"
                                  " accepts")
    assert nvc.decoders == [] and fake_cuda.ledger.kinds() == {}


def test_a_stream_that_grows_its_frames_ends_with_the_sizes_named(nvc: ModuleType, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Two H.264 streams back to back (a camera that switched resolution): frames larger than the surfaces the
    first frame sized end the stream, as a frame over its header's size ends the CPU reader's file. The line names
    the camera, where the reader knows it."""
    path = tmp_path / "grows.h264"
    path.write_bytes(_h264(tmp_path / "small.h264", 64, 48) + _h264(tmp_path / "large.h264", 128, 96))
    reader = open_nvdec(path, camera_id="front")
    with caplog.at_level(logging.ERROR, logger="edge.nvdec"):
        assert read_all(reader) == 3
    assert caplog.messages == [f"front: video file {path} changed its frames to 128x96 from 64x48, larger than its"
                               " surfaces. Hint: a live stream is opened again; a file ends here"]
    reader.close()


def _h264(path: Path, width: int, height: int) -> bytes:
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for value in (0, 128, 255):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), value, np.uint8),
                                                             format="bgr24").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return path.read_bytes()


def test_a_missing_file_says_so(nvc: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="camera file does not exist"):
        open_nvdec(tmp_path / "gone.mp4")


def test_all_surfaces_held_drops_decoded_frames_with_one_warning(nvc: ModuleType, cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sources, "ACQUIRE_TIMEOUT_S", 0.01)
    path = clips.clip("h264", cache)
    reader = open_nvdec(path, in_flight=0, query="")        # 0 + 2 + DECODE_DELAY surfaces; realtime=0 would wait
    count = reader._pool.count
    assert count == 2 + nvdec.DECODE_DELAY
    with caplog.at_level(logging.DEBUG, logger="edge.nvdec"):
        held = [reader.read() for _ in range(count)]        # every surface out, none released
        assert reader.read() is None                        # the rest of the clip finds no surface
    assert reader.dropped == clips.decoded_frames(path) - count and reader.frames == clips.decoded_frames(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"video file {path}: all {count} frame surfaces are still held after 0.0 s: decoded frame"
                        " dropped (1 so far); a lane keeps frames longer than its in_flight, or frames are not"
                        " released"]
    for frame in held:
        frame.release(None)
    reader.close()
    assert fake_cuda.ledger.kinds() == {}


def test_a_lossless_file_waits_for_a_surface_and_drops_nothing(nvc: ModuleType, cache: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """realtime=0 drops no frame (its LatestFrame waits for the lanes): the reader waits for a surface too."""
    monkeypatch.setattr(sources, "ACQUIRE_TIMEOUT_S", 0.01)
    path = clips.clip("h264", cache)
    reader = open_nvdec(path, in_flight=0)
    held = [reader.read() for _ in range(reader._pool.count)]
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(reader.read()))
    thread.start()
    wait_for(lambda: "waiting for the lanes, since realtime=0 drops no frame" in caplog.text, 10,
             "the reader to say that it waits")
    assert thread.is_alive() and not got
    held.pop(0).release(None)                               # a lane gives one back
    thread.join(10)
    for frame in got + held:
        frame.release(None)
    assert read_all(reader) == clips.decoded_frames(path) - len(got) - len(held) - 1
    assert reader.dropped == 0 and reader.frames == clips.decoded_frames(path)
    reader.close()
    assert fake_cuda.ledger.kinds() == {}


def test_close_with_frames_out_frees_the_pool_once_they_come_back(nvc: ModuleType, cache: Path) -> None:
    reader = open_nvdec(clips.clip("h264", cache))
    frames = [reader.read(), reader.read()]
    reader.close()
    assert fake_cuda.ledger.kinds()["device buffer"] == reader._pool.count     # still readable by their holders
    assert surface_bytes(frames[1]).shape == (576 + 288, 768)
    for frame in frames:
        frame.release(None)
    wait_for(lambda: fake_cuda.ledger.kinds() == {}, 10, "the pool freed after the last release")


def test_close_frees_the_pool_after_retire_s_even_if_a_frame_never_comes_back(
        nvc: ModuleType, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("edge.gpu.surfaces.RETIRE_S", 0.05)
    reader = open_nvdec(clips.clip("h264", cache))
    frame = reader.read()
    with caplog.at_level(logging.WARNING, logger="edge.surfaces"):
        reader.close()
        wait_for(lambda: fake_cuda.ledger.kinds() == {}, 10, "the pool freed after RETIRE_S")
    count = 2 + 2 + nvdec.DECODE_DELAY
    assert caplog.messages == [f"{reader.what}: 1 of its {count} frame surfaces still held 0 s after it closed; freed"
                               " all the same"]
    assert frame._references == 1                           # its holder still has it, unreadable now
    with pytest.raises(Exception, match="surface pool was freed"):
        _ = frame.planes


# --- the clips ------------------------------------------------------------------------------------------------------

def test_a_clip_is_named_by_its_recipe_and_made_only_where_pyav_and_the_demo_video_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = clips.CLIPS["h265-10bit"]
    assert recipe.stem.startswith("h265-768x576-10f-")
    assert clips.Clip("libx265", 10, pix_fmt="yuv420p10le").stem != clips.Clip("libx265", 10).stem
    with pytest.raises(FileNotFoundError, match=r"media/vtest.avi is missing: .* run `edge assets fetch`"):
        clips.clip("h265-10bit", tmp_path)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(FileNotFoundError, match=r"PyAV \(the dev extra\) is not here to make it"):
        clips.clip("h265-10bit", tmp_path)
    assert not (tmp_path / "clips" / f"{recipe.stem}.mp4").exists()


# --- a camera on NVDEC: the Camera's end of file, loop, pacing, short-file check and reconnect ---------------------

class Events:
    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str, details: dict[str, Any]) -> None:
        self.names.append(name)


def nvdec_camera(uri: str, events: Any = None) -> Camera:
    return Camera("cam", parse_uri(uri), on_event=events or Events(), opener=Decoding("cam", "nvdec", 2))


def take(camera: Camera, count: int, timeout: float = 10) -> list[Frame]:
    """`count` frames from a registered reader, each released at once (its device frame goes back)."""
    reader, frames, last = camera.latest.register(), [], -1
    while len(frames) < count:
        frame = camera.latest.get_after(reader, last, timeout)
        assert frame is not None, f"no frame within {timeout} s"
        frame.release()
        frames.append(frame)
        last = frame.index
    camera.latest.unregister(reader)
    return frames


def test_a_lossless_looping_camera_delivers_every_frame_and_gives_every_surface_back(
        nvc: ModuleType, cache: Path) -> None:
    path = clips.clip("h264", cache)
    per_pass = clips.decoded_frames(path)
    camera = nvdec_camera(f"file://{path}?realtime=0&loop=1")
    camera.open()                                           # a reader registered before the first frame
    frames = []
    thread = threading.Thread(target=lambda: frames.extend(take(camera, 2 * per_pass + 5)))
    thread.start()
    camera.start()
    thread.join(30)
    assert [f.index for f in frames] == list(range(2 * per_pass + 5))          # on across the loop, none dropped
    assert all(f.device is not None and f.image is None and f.size == (768, 576) for f in frames)
    assert len(nvc.decoders) >= 3 and camera.stats.missing_frames == 0        # a reader per pass
    assert camera.stop(5)
    wait_for(lambda: fake_cuda.ledger.kinds() == {}, 10, "every pass's pool freed")


def test_realtime_paces_at_the_files_frame_rate(nvc: ModuleType, cache: Path) -> None:
    camera = nvdec_camera(f"file://{clips.clip('h264', cache)}")              # realtime=1: 10 fps
    camera.start()
    frames = take(camera, 4)
    assert camera.stop(5)
    gaps = [(b.t_capture_ns - a.t_capture_ns) / 1e9 for a, b in zip(frames, frames[1:])]
    assert all(gap >= 0.08 for gap in gaps), gaps                              # 0.1 s a frame, not as fast as NVDEC


def test_a_file_cut_short_warns_as_the_cpu_reader_does(nvc: ModuleType, cache: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    whole = tmp_path / "whole.mp4"                  # the index (moov) first, so that half a file still opens
    with av.open(str(clips.clip("h264", cache))) as source, \
            av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    camera = nvdec_camera(f"file://{cut}?realtime=0")
    camera.open()
    frames: list[Frame] = []
    thread = threading.Thread(target=lambda: frames.extend(_until_end(camera)))
    with caplog.at_level(logging.WARNING, logger="edge.camera"):
        thread.start()
        camera.start()
        thread.join(20)
    assert 0 < len(frames) < 30 and camera.stats.missing_frames == 40 - len(frames)
    assert [r.getMessage() for r in caplog.records] == [
        f"cam: video file {cut} ended after {len(frames)} of the 40 frames its header declares: the file may be"
        f" truncated or corrupt (copied before it was complete?); `ffmpeg -v error -i {cut} -f null -` lists what"
        f" FFmpeg finds wrong with it"]
    assert camera.stop(5)


def _until_end(camera: Camera) -> list[Frame]:
    reader, frames, last = camera.latest.register(), [], -1
    try:
        while (frame := camera.latest.get_after(reader, last, 10)) is not None:
            frame.release()
            frames.append(frame)
            last = frame.index
    except EndOfStream:
        return frames
    raise AssertionError("the camera neither ended nor delivered a frame within 10 s")


def test_an_rtsp_camera_on_nvdec_is_lost_and_recovered_with_the_cameras_backoff(
        nvc: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    stream = rtsp.media("h264")
    rtsp.require(stream)
    port = free_port()
    server = rtsp.serve(port, stream)
    events = Events()
    camera = nvdec_camera(f"rtsp://127.0.0.1:{port}/live", events)
    try:
        with caplog.at_level(logging.INFO, logger="edge.runtime"):
            camera.start()
            first = take(camera, 30)    # FFmpeg's probe hands out ~18 at once, then they come at the stream's pace
        assert first[0].device is not None and first[0].size == (320, 240)
        assert camera.clock.stats.mapped >= 25          # capture times from the stream's, through the decoder
        gaps = [(b.t_capture_ns - a.t_capture_ns) / 1e6 for a, b in zip(first[-5:], first[-4:])]
        # the server's 10 fps, not when NVDEC returned (a loaded server may skip a frame: a step of 200 ms)
        assert all(gap > 97 and abs(gap - 100 * round(gap / 100)) <= 3 for gap in gaps), gaps
        assert [r.getMessage() for r in caplog.records if r.name == "edge.runtime"] == [
            "cam: decode nvdec (the config says so; PyNvVideoCodec 2.2.4: H.264 320x240, BT.601 limited range,"
            " assumed: the stream says nothing)"]
        server.kill()
        server.wait(10)
        wait_for(lambda: "camera.lost" in events.names, 15, "camera.lost")
        server = rtsp.serve(port, stream)
        wait_for(lambda: "camera.recovered" in events.names, 30, "camera.recovered")
        assert take(camera, 3)[0].index > first[-1].index and camera.stats.reconnects == 1
    finally:
        server.kill()
        server.wait(10)
        assert camera.stop(10)
    wait_for(lambda: fake_cuda.ledger.kinds() == {}, 10, "both readers' pools freed")
