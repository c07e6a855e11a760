"""Which reader a camera gets (edge/pipeline/runtime.py, Decoding) for its `decode`, and the log line that says
which path and why: on a Jetson (NVIDIA's GStreamer elements, software stand-ins here: tests/support/fake_jetson.py)
GStreamer's reader for file://, rtsp:// and csi://; elsewhere NVDEC through PyNvVideoCodec (its stand-in decodes
for real with PyAV: tests/support/fake_nvcodec.py) for file:// and rtsp://; the CPU reader for `cpu`, another
scheme, and what a hardware path refuses under `auto`. Real clips (tests/support/clips.py) and a real RTSP camera."""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edge.config.cameras import parse_uri
from edge.config.loader import parse_config
from edge.errors import EngineError, SourceError
from edge.pipeline import nvdec
from edge.pipeline.gstreamer import csi_pipeline
from edge.pipeline.gstreamer_reader import GstReader
from edge.pipeline.nvdec import NvdecReader
from edge.pipeline.runtime import Cameras, Decoding
from edge.pipeline.sources import Refused
from tests.conftest import free_port, wait_for
from tests.support import clips, fake_cuda, fake_jetson, rtsp

MAX = (7680, 4320)


@pytest.fixture
def jetson(nvc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Jetson: NVIDIA's GStreamer elements and an integrated GPU; PyNvVideoCodec's stand-in is there too, and the
    Jetson's path must not take it. Yields Gst."""
    monkeypatch.setattr(fake_cuda.ledger, "integrated", True)
    with fake_jetson.installed() as Gst:
        yield Gst


def choose(decode: str, uri: str, caplog: pytest.LogCaptureFixture) -> tuple[Any, list[str]]:
    with caplog.at_level(logging.INFO, logger="edge.runtime"):
        caplog.clear()
        reader = Decoding("front", decode, 2)(parse_uri(uri), MAX)
        return reader, [r.getMessage() for r in caplog.records if r.name == "edge.runtime"]


def jetson_path(Gst: Any, codec: str, size: str) -> str:
    return f"{Gst.version_string()} on a Jetson: {codec} by nvv4l2decoder (NVDEC), BGRx by nvvidconv (VIC), {size}"


# --- on a Jetson: GStreamer's reader --------------------------------------------------------------------------------

@pytest.mark.parametrize("decode, why", [("auto", "auto"), ("nvdec", "the config says so;")])
def test_on_a_jetson_a_file_is_read_through_gstreamer_and_the_log_says_so(
        jetson: Any, nvc: ModuleType, cache: Path, caplog: pytest.LogCaptureFixture, decode: str, why: str) -> None:
    reader, log = choose(decode, f"file://{clips.clip('h264', cache)}?realtime=0", caplog)
    assert isinstance(reader, GstReader) and reader._pool.count == 2 + 2          # in_flight + 2 surfaces
    frame = reader.read()
    assert (frame.pixel_format, frame.width, frame.height) == ("bgrx", 768, 576)
    frame.release(None)
    reader.close()
    said = f"{why}{':' if why == 'auto' else ''} {jetson_path(jetson, 'H.264', '768x576')}"
    assert log == [f"front: decode nvdec ({said})"]
    assert nvc.decoders == []                               # PyNvVideoCodec was not asked
    wait_for(lambda: fake_cuda.ledger.live == {}, what="the surfaces freed")


def test_on_a_jetson_an_rtsp_camera_is_read_through_gstreamer(jetson: Any, nvc: ModuleType,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    stream = rtsp.media("h265")
    rtsp.require(stream)
    port = free_port()
    server = rtsp.serve(port, stream, shared=False)      # shared: the probe's teardown raced the open (503)
    try:
        reader, log = choose("nvdec", f"rtsp://127.0.0.1:{port}/live", caplog)
        assert isinstance(reader, GstReader)
        frame = reader.read()
        assert (frame.pixel_format, frame.width, frame.height) == ("bgrx", 320, 240)
        frame.release(None)
    finally:
        server.kill()
        server.wait()
    caplog.set_level(logging.DEBUG, "edge.camera")
    while (frame := reader.read()) is not None:                # what was under way when the camera went
        frame.release(None)
    reader.close()
    assert log == [f"front: decode nvdec (the config says so; {jetson_path(jetson, 'H.265', '320x240')})"]
    assert f"front: RTSP stream rtsp://127.0.0.1:{port}/live: " in caplog.text     # the lost camera named
    assert nvc.decoders == []


@pytest.mark.parametrize("decode", ["auto", "nvdec"])
def test_on_a_jetson_a_csi_sensor_goes_to_gstreamers_reader_and_cpu_to_opencv(
        jetson: Any, caplog: pytest.LogCaptureFixture, decode: str) -> None:
    """The stand-in nvarguscamerasrc cannot feed the stand-in nvvidconv its NVMM caps, so GStreamer's reader gets as
    far as building the sensor's pipeline (device=True: BGRx into its mapped surfaces) and is Refused there: `nvdec`
    fails with that, `auto` falls back to the CPU, where this OpenCV (a pip wheel, no GStreamer) refuses csi://."""
    uri = parse_uri("csi://0?size=1280x720")
    decoding = Decoding("front", decode, 2)
    with caplog.at_level(logging.INFO, logger="edge.camera"):
        with pytest.raises(SourceError) as refused:
            decoding(uri, MAX)
    assert f"CSI sensor 0: GStreamer {csi_pipeline(uri, device=True)}" in caplog.messages
    if decode == "nvdec":
        assert type(refused.value) is Refused and refused.value.note == csi_pipeline(uri, device=True)
    else:
        assert refused.value.what == ("camera csi://0?size=1280x720 needs OpenCV with GStreamer, and this OpenCV"
                                      " has none")
    assert decoding.chosen is None
    caplog.clear()
    with pytest.raises(SourceError, match="needs OpenCV with GStreamer"):      # cpu: OpenCV's GStreamer backend
        Decoding("front", "cpu", 2)(uri, MAX)
    assert not any("GStreamer nvarguscamerasrc" in message for message in caplog.messages)


def test_on_a_jetson_auto_takes_the_cpu_for_what_gstreamer_refuses_and_nvdec_fails(
        jetson: Any, nvc: ModuleType, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = cache / clips.VTEST                              # XviD: video/x-divx to GStreamer
    reason = f"video file {path} holds video/x-divx video, and decode: nvdec takes H.264 or H.265 only"
    reader, log = choose("auto", f"file://{path}", caplog)
    assert isinstance(reader.read(), np.ndarray) and log == [f"front: decode cpu (auto: {reason})"]
    reader.close()
    with pytest.raises(Refused) as refused:
        Decoding("front", "nvdec", 2)(parse_uri(f"file://{path}"), MAX)
    assert refused.value.what == reason and "decode: cpu" in refused.value.hint
    reader, log = choose("auto", "test://bars?size=64x48", caplog)
    assert log == ["front: decode cpu (a Jetson's GStreamer decode reads file://, rtsp:// and csi:// cameras, not"
                   " test://)"]
    assert nvc.decoders == [] and fake_cuda.ledger.live == {}


def test_off_a_jetson_nvdec_refuses_a_csi_sensor_with_a_hint(nvc: ModuleType) -> None:
    uri = parse_uri("csi://0")
    with pytest.raises(SourceError) as refused:
        Decoding("front", "nvdec", 2)(uri, MAX)
    assert refused.value.what == ("CSI sensor 0: decode: nvdec, but NVDEC reads file:// and rtsp:// cameras, not csi://;"
                                  " GStreamer here has no NVIDIA nvv4l2decoder and nvvidconv, so this is no Jetson")
    assert "on the Jetson" in refused.value.hint and "decode: cpu" in refused.value.hint
    with pytest.raises(SourceError, match="needs OpenCV with GStreamer"):      # auto: the CPU reader, OpenCV's
        Decoding("front", "auto", 2)(uri, MAX)
    assert nvc.decoders == []


def test_a_stream_without_a_frame_in_its_first_packets_fails_the_open(nvc: ModuleType, cache: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvdec, "PRIME_PACKETS", 1)          # the clips' first frame comes out of the 2nd packet
    path = clips.clip("h264", cache)
    with pytest.raises(SourceError) as failed:
        Decoding("cam", "auto", 2)(parse_uri(f"file://{path}"), (7680, 4320))      # a source problem: no fallback
    assert type(failed.value) is SourceError
    assert failed.value.what == f"video file {path}: NVDEC decoded no frame from its first 1 packets"
    assert fake_cuda.ledger.kinds() == {}


# --- off a Jetson: NVDEC through PyNvVideoCodec, else the CPU ---------------------------------------------------

def test_auto_picks_nvdec_for_h264_and_says_why(nvc: ModuleType, cache: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = clips.clip("h264", cache)
    reader, log = choose("auto", f"file://{path}", caplog)
    assert isinstance(reader, NvdecReader)
    assert log == ["front: decode nvdec (auto: PyNvVideoCodec 2.2.4: H.264 768x576, BT.601 limited range, assumed:"
                   " the stream says nothing)"]
    reader.close()


@pytest.mark.parametrize("setup, reason", [
    (lambda mp: mp.setitem(sys.modules, "PyNvVideoCodec", None), "PyNvVideoCodec is not installed"),
    (lambda mp: (mp.delitem(sys.modules, "PyNvVideoCodec"),
                 mp.setattr(sys, "meta_path", [_Unloadable(), *sys.meta_path])),
     "PyNvVideoCodec does not load (Driver version is too old)"),
    (lambda mp: mp.setattr(fake_cuda.ledger, "integrated", True), "this is an integrated GPU (a Jetson): its NVDEC"
                                                                  " is reached through GStreamer, not PyNvVideoCodec,"
                                                                  " and GStreamer here lacks NVIDIA's nvv4l2decoder or"
                                                                  " nvvidconv"),
    (lambda mp: mp.setattr("edge.gpu.cuda.driver", _no_driver), "no usable CUDA GPU: CUDA needed but `import"
                                                               " pycuda.driver` failed (No module named 'pycuda')")])
def test_auto_falls_back_to_the_cpu_and_says_why(nvc: ModuleType, cache: Path, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch, setup: Any, reason: str) -> None:
    setup(monkeypatch)
    reader, log = choose("auto", f"file://{clips.clip('h264', cache)}", caplog)
    assert not isinstance(reader, NvdecReader) and reader.read().shape == (576, 768, 3)
    assert log == [f"front: decode cpu (auto: {reason})"]
    reader.close()


class _Unloadable(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A PyNvVideoCodec whose import fails as the 2.2.4 wheel's __init__ does on an old driver (RuntimeError)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name == "PyNvVideoCodec" else None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        raise RuntimeError("Driver version is too old")


def _no_driver() -> Any:
    raise EngineError("CUDA needed but `import pycuda.driver` failed", note="No module named 'pycuda'")


@pytest.mark.parametrize("name, reason", [
    ("h265-10bit", "auto: NVDEC decodes video file {path} (H.265) to P016, not NV12: a 10-bit or 4:2:2/4:4:4 stream,"
                   " which edge does not take from NVDEC"),
    ("vtest", "auto: video file {path} is coded as 'MP43', not H.264 or H.265: NVDEC is used for those only")])
def test_auto_takes_the_cpu_for_a_stream_nvdec_refuses(nvc: ModuleType, cache: Path, caplog: pytest.LogCaptureFixture,
                                                       name: str, reason: str) -> None:
    path = cache / clips.VTEST if name == "vtest" else clips.clip(name, cache)
    reader, log = choose("auto", f"file://{path}", caplog)
    assert not isinstance(reader, NvdecReader) and reader.read() is not None
    assert log == [f"front: decode cpu ({reason.format(path=path)})"]
    reader.close()
    assert fake_cuda.ledger.kinds() == {}


def test_cpu_and_other_schemes_take_the_cpu_reader(nvc: ModuleType, cache: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    reader, log = choose("cpu", f"file://{clips.clip('h264', cache)}", caplog)
    assert not isinstance(reader, NvdecReader) and log == ["front: decode cpu (the config says so)"]
    reader.close()
    reader, log = choose("auto", "test://bars?size=64x48", caplog)
    assert log == ["front: decode cpu (NVDEC reads file:// and rtsp:// cameras, not test://)"]
    assert nvc.decoders == []


def test_nvdec_where_it_cannot_run_is_an_error_not_a_fallback(nvc: ModuleType, cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    with pytest.raises(Refused) as refused:
        Decoding("front", "nvdec", 2)(parse_uri(f"file://{clips.clip('h264', cache)}"), (7680, 4320))
    assert refused.value.what == "PyNvVideoCodec is not installed" and "edge[nvdec]" in refused.value.hint


def test_the_choice_is_made_once_and_kept_for_reconnects(nvc: ModuleType, cache: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    decoding = Decoding("front", "auto", 2)
    uri = parse_uri(f"file://{clips.clip('h264', cache)}?realtime=0")
    with caplog.at_level(logging.INFO, logger="edge.runtime"):
        with pytest.raises(SourceError):                    # the source itself fails: nothing is chosen
            decoding(parse_uri("file:///nonexistent/clip.mp4"), (7680, 4320))
        assert decoding.chosen is None
        readers = [decoding(uri, (7680, 4320)) for _ in range(3)]
    assert decoding.chosen == "nvdec" and all(isinstance(r, NvdecReader) for r in readers)
    assert len([m for m in caplog.messages if "decode nvdec" in m]) == 1
    for reader in readers:
        reader.close()


def test_the_runtime_gives_each_camera_its_decode_and_surfaces_for_its_lanes() -> None:
    config = parse_config("""
version: 1
cameras:
  - {id: front, uri: "file:///v/front.mp4", decode: nvdec}
  - {id: rear, uri: "file:///v/rear.mp4"}
tasks:
  - {name: a, type: detector, model: m.onnx, cameras: [front, rear], in_flight: 3}
  - {name: b, type: detector, model: m.onnx, cameras: [front], enabled: false}
""", source="test.yaml", base_dir=Path("/"), environ={})
    cameras = Cameras(on_event=lambda name, details: None)
    front, rear = cameras.make("front", config)._open_reader, cameras.make("rear", config)._open_reader
    assert (front.camera_id, front.decode, front.surfaces) == ("front", "nvdec", 3 + 2 + 2)   # a task enabled later too
    assert (rear.decode, rear.surfaces) == ("auto", 3 + 2)


