"""Decode on a Jetson (edge/pipeline/gstreamer.py): the pipeline strings, exact and parsed back element by element
in this machine's GStreamer with software stand-ins under NVIDIA's element names (tests/support/fake_jetson.py); the
choice of the Jetson path, of demuxer, parser and codec, and the errors of that choice.

The elements and properties follow NVIDIA's Jetson Linux "Accelerated GStreamer" guide,
https://docs.nvidia.com/jetson/archives/r36.4/DeveloperGuide/SD/Multimedia/AcceleratedGstreamer.html (decode with
nvv4l2decoder, conversion with nvvidconv, capture with nvarguscamerasrc), and the DeepStream Gst-nvvideo4linux2 page
for the decoder's sink caps; docs/gpu.md, "Decode on a Jetson", says which properties are set and why.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.cameras import parse_uri
from edge.errors import SourceError
from edge.pipeline import gstreamer
from edge.pipeline.gstreamer import csi_pipeline, pipeline_description, probe
from edge.pipeline.gstreamer_reader import open_gstreamer_reader
from edge.pipeline.sources import Refused
from tests.support import clips, fake_jetson
from tests.support.fake_jetson import elements, gst

MAX = (7680, 4320)
DECODE = "nvv4l2decoder enable-max-performance=1 ! nvvidconv ! video/x-raw,format=BGRx"
FILE_SINK = "appsink name=sink drop=false max-buffers=2 sync=false emit-signals=false"
LIVE_SINK = "appsink name=sink drop=true max-buffers=1 sync=false emit-signals=false"


def clip(tmp_path: Path, name: str, encoder: str, frames: int = 3, fmt: str | None = None) -> Path:
    return clips.encode(clips.small(encoder, frames), tmp_path / name, fmt=fmt)


@pytest.fixture
def jetson_elements() -> Iterator[Any]:
    """Software stand-ins under NVIDIA's element names for the test (yields Gst)."""
    with fake_jetson.installed() as Gst:
        yield Gst


# --- the strings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "codec", "demuxer", "expected"), [
    ("a.mp4", "h264", "qtdemux", 'filesrc location="/v/a.mp4" ! qtdemux name=demux demux.video_0 ! queue ! h264parse'),
    ("a.mkv", "h265", "matroskademux",
     'filesrc location="/v/a.mkv" ! matroskademux name=demux demux.video_0 ! queue ! h265parse'),
    ("a.avi", "h264", "avidemux",
     'filesrc location="/v/a.avi" ! avidemux name=demux demux.video_0 ! queue ! h264parse'),
    ("a.h264", "h264", None, 'filesrc location="/v/a.h264" ! h264parse'),
    ("a.hevc", "h265", None, 'filesrc location="/v/a.hevc" ! h265parse'),
])
def test_file_pipelines(name: str, codec: str, demuxer: str | None, expected: str) -> None:
    description = pipeline_description(parse_uri(f"file:///v/{name}"), codec, demuxer)
    assert description == f"{expected} ! {DECODE} ! {FILE_SINK}"


@pytest.mark.parametrize(("codec", "chain"), [("h264", "rtph264depay ! h264parse"),
                                              ("h265", "rtph265depay ! h265parse")])
def test_rtsp_pipelines(codec: str, chain: str) -> None:
    uri = parse_uri("rtsp://admin:s3cret@10.0.0.7:554/stream1")
    assert pipeline_description(uri, codec, None) == (
        'rtspsrc location="rtsp://admin:s3cret@10.0.0.7:554/stream1" latency=200 protocols=tcp tcp-timeout=2000000'
        f" ! {chain} ! {DECODE} ! {LIVE_SINK}")
    assert gstreamer.probe_description(uri, None) == (
        'rtspsrc location="rtsp://admin:s3cret@10.0.0.7:554/stream1" latency=200 protocols=tcp tcp-timeout=2000000'
        " name=demux")


def test_a_message_naming_the_url_opened_is_scrubbed_of_its_password() -> None:
    """The URL opened leaves edge's parameters out, so it is not the URI as written: both are scrubbed."""
    uri = parse_uri("rtsp://admin:s3cret@10.0.0.7/stream1?transport=udp&channel=2")
    said = f'Could not open resource for reading: rtspsrc location="{uri.location}"; {uri.raw}'
    assert gstreamer.scrub(said, uri) == ('Could not open resource for reading: rtspsrc location='
                                          '"rtsp://admin:***@10.0.0.7/stream1?channel=2";'
                                          ' rtsp://admin:***@10.0.0.7/stream1?transport=udp&channel=2')


def test_csi_pipelines_keep_nvarguscamerasrc() -> None:
    uri = parse_uri("csi://1?size=1920x1080&fps=60&flip=2")
    head = ("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=60/1 !"
            " nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! ")
    assert csi_pipeline(uri, device=True) == head + LIVE_SINK
    assert csi_pipeline(uri, device=False) == head + ("videoconvert ! video/x-raw,format=BGR ! appsink drop=1"
                                                      " max-buffers=1 sync=false")
    assert csi_pipeline(parse_uri("csi://0"), device=True).startswith(
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 !"
        " nvvidconv flip-method=0 !")


@pytest.mark.parametrize("fps,caps", [("29.97", "2997/100"), ("59.94", "2997/50"), ("0.4", "2/5"), ("0.01", "1/100"),
                                      ("1000", "1000/1"), ("29.97002997", "30000/1001")])
def test_a_fractional_frame_rate_is_written_as_a_fraction(fps: str, caps: str) -> None:
    """int(fps) made 0.4 framerate=0/1 and 29.97 30/1."""
    assert f"framerate={caps} !" in csi_pipeline(parse_uri(f"csi://0?fps={fps}"), device=True)


def test_appsinks() -> None:
    assert gstreamer.appsink(live=True) == LIVE_SINK
    assert gstreamer.appsink(live=False) == FILE_SINK


def test_probe_descriptions() -> None:
    assert gstreamer.probe_description(parse_uri("file:///v/a b.mp4"), "qtdemux") == \
        'filesrc location="/v/a b.mp4" ! qtdemux name=demux'


def _properties(element: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: element.get_property(name) for name in names}


def test_file_pipeline_parsed_back_element_by_element(jetson_elements: Any) -> None:
    Gst = jetson_elements
    path = '/v/it\'s a "clip" \\ here.mp4'
    pipeline = Gst.parse_launch(pipeline_description(parse_uri(f"file://{path}"), "h264", "qtdemux"))
    found = elements(pipeline)
    assert [name for name, _ in found] == ["filesrc", "qtdemux", "queue", "h264parse", "nvv4l2decoder", "nvvidconv",
                                          "capsfilter", "appsink"]
    parts = dict(found)
    assert parts["filesrc"].get_property("location") == path                  # quoted and escaped, read back whole
    assert _properties(parts["nvv4l2decoder"], ("enable-max-performance", "disable-dpb")) == {
        "enable-max-performance": True, "disable-dpb": False}
    assert parts["capsfilter"].get_property("caps").to_string() == "video/x-raw, format=(string)BGRx"
    assert _properties(parts["appsink"], ("drop", "max-buffers", "sync", "emit-signals")) == {
        "drop": False, "max-buffers": 2, "sync": False, "emit-signals": False}
    assert parts["appsink"].get_name() == "sink"


def test_rtsp_and_csi_pipelines_parsed_back_element_by_element(jetson_elements: Any) -> None:
    Gst = jetson_elements
    if Gst.ElementFactory.find("rtspsrc") is None or Gst.ElementFactory.find("rtph265depay") is None:
        pytest.skip("needs rtspsrc and rtph265depay (gstreamer1.0-plugins-good)")
    uri = parse_uri("rtsp://admin:s3cret@10.0.0.7/stream1")
    found = elements(Gst.parse_launch(pipeline_description(uri, "h265", None)))
    assert [name for name, _ in found] == ["rtspsrc", "rtph265depay", "h265parse", "nvv4l2decoder", "nvvidconv",
                                          "capsfilter", "appsink"]
    parts = dict(found)
    assert _properties(parts["rtspsrc"], ("location", "latency", "tcp-timeout")) == {
        "location": uri.raw, "latency": 200, "tcp-timeout": 2_000_000}
    assert parts["rtspsrc"].get_property("protocols") == 4                       # GST_RTSP_LOWER_TRANS_TCP
    udp = parse_uri("rtsp://10.0.0.7/stream1?transport=udp&timeout=0.5&channel=2")
    source = elements(Gst.parse_launch(pipeline_description(udp, "h265", None)))[0][1]
    assert _properties(source, ("location", "timeout")) == {"location": "rtsp://10.0.0.7/stream1?channel=2",
                                                            "timeout": 500_000}   # µs without a UDP packet
    assert source.get_property("protocols") == 1                                  # GST_RTSP_LOWER_TRANS_UDP
    assert _properties(parts["appsink"], ("drop", "max-buffers")) == {"drop": True, "max-buffers": 1}
    # The CSI pipeline cannot link here (no software element takes NVMM caps): element by element, each made by its
    # factory with its properties set from the string, as gst-launch sets them.
    parts = [part.split(" ") for part in csi_pipeline(parse_uri("csi://1?flip=2"), device=True).split(" ! ")]
    assert [part[0] for part in parts] == [
        "nvarguscamerasrc", "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1", "nvvidconv",
        "video/x-raw,format=BGRx", "appsink"]
    for factory, *settings in (part for part in parts if not part[0].startswith("video/")):
        element = Gst.ElementFactory.make(factory)
        for setting in settings:
            name, value = setting.split("=")
            Gst.util_set_object_arg(element, name, value)
            assert str(element.get_property(name)).lower() == value, setting
    assert Gst.Caps.from_string(parts[1][0]).get_features(0).contains("memory:NVMM")


# --- the choice --------------------------------------------------------------------------------------------------

def test_without_pygobject_nothing_is_chosen_and_opening_says_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gi", None)
    assert gstreamer.has_jetson_elements() is False
    with pytest.raises(Refused, match="GStreamer's Python bindings") as info:
        open_gstreamer_reader(parse_uri("file:///v/a.mp4"), MAX, surfaces=4)
    assert "python3-gi gir1.2-gstreamer-1.0" in str(info.value) and "--system-site-packages" in str(info.value)


def test_the_jetson_elements_decide(tmp_path) -> None:
    Gst = gst()
    assert gstreamer.has_jetson_elements() is False                          # a PC's GStreamer: no nvv4l2decoder
    with pytest.raises(Refused, match="needs NVIDIA's GStreamer elements nvv4l2decoder, nvvidconv") as info:
        open_gstreamer_reader(parse_uri(f"file://{tmp_path}/a.mp4"), MAX, surfaces=4)
    assert "decode: cpu" in info.value.hint
    with pytest.raises(Refused, match="nvarguscamerasrc, nvvidconv"):
        open_gstreamer_reader(parse_uri("csi://0"), MAX, surfaces=4)
    with pytest.raises(Refused, match="v4l2:// cameras do not go through"):
        open_gstreamer_reader(parse_uri("v4l2:///dev/video0"), MAX, surfaces=4)
    assert Gst.ElementFactory.find("nvv4l2decoder") is None


def test_with_the_jetson_elements_decode_nvdec_is_there(jetson_elements: Any) -> None:
    assert gstreamer.has_jetson_elements() is True


@pytest.mark.parametrize(("name", "codec", "fmt", "found"), [
    ("a.mp4", "libx264", None, ("h264", "qtdemux", (320, 240))),
    ("a.mkv", "libx265", None, ("h265", "matroskademux", (320, 240))),
    ("a.avi", "libx264", None, ("h264", "avidemux", (320, 240))),
    ("a.264", "libx264", "h264", ("h264", None, (0, 0))),
    ("a.hevc", "libx265", "hevc", ("h265", None, (0, 0))),
])
def test_probe_finds_codec_and_demuxer(tmp_path, name: str, codec: str, fmt: str | None, found: tuple) -> None:
    path = clip(tmp_path, name, codec, fmt=fmt)
    assert probe(gst(), parse_uri(f"file://{path}")) == found


def test_a_codec_nvdec_refuses_is_a_clear_error(tmp_path, demo) -> None:
    """The demo's vtest.avi is XviD (MPEG-4 part 2, video/x-divx to GStreamer), as is PyAV's mpeg4 in its own caps."""
    for path, caps in ((demo.video, "video/x-divx"), (clip(tmp_path, "mpeg4.avi", "mpeg4"), "video/mpeg")):
        with pytest.raises(Refused) as info:
            probe(gst(), parse_uri(f"file://{path}"))
        assert info.value.what == f"video file {path} holds {caps} video, and decode: nvdec takes H.264 or H.265 only"
        assert "decode: cpu" in info.value.hint


def test_a_file_nvdec_cannot_read_and_a_missing_one_are_clear_errors(tmp_path) -> None:
    Gst = gst()
    with pytest.raises(Refused, match=r"decode: nvdec reads the video files .*\.264.*\.mp4.*, by their suffix"):
        probe(Gst, parse_uri(f"file://{tmp_path}/a.webm"))
    with pytest.raises(SourceError) as info:
        probe(Gst, parse_uri(f"file://{tmp_path}/missing.mp4"))
    assert info.value.what == f"video file {tmp_path}/missing.mp4: Resource not found."
    assert type(info.value) is SourceError                                   # the source's fault: no fallback
    assert "check the path" in info.value.hint
    (tmp_path / "audio.mkv").write_bytes(b"")
    with pytest.raises(SourceError, match="audio.mkv"):
        probe(Gst, parse_uri(f"file://{tmp_path}/audio.mkv"))
