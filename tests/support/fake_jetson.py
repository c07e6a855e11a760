"""Stand-ins of a Jetson's GStreamer elements, registered in this machine's real GStreamer under NVIDIA's names, so
the pipeline strings of edge/pipeline/gstreamer.py run here as written, with software doing NVDEC's and VIC's work.

They follow NVIDIA's documented interface (Jetson Linux "Accelerated GStreamer" and the DeepStream Gst-nvvideo4linux2
page; docs/gpu.md, "Decode on a Jetson"), as far as the pipelines use it:
- `nvv4l2decoder`: sink caps H.264 or H.265 byte-stream in access units (what NVDEC takes; a parser before it converts
  an MP4's avc to that), properties `enable-max-performance` and `disable-dpb`; decodes in software (decodebin, which
  plugs avdec_h264/avdec_h265 from gstreamer1.0-libav).
- `nvvidconv`: videoconvert, with NVIDIA's `flip-method` property (unused by the software).
- `nvarguscamerasrc`: `sensor-id`, and a source pad that links to anything (NVMM caps included) and never
  delivers a frame: it is for parsing the CSI pipeline only.
PyGObject comes from the venv, or else from Debian's python3-gi where it is built for this Python; `gst()` skips
the test with the reason where neither is there.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SYSTEM_GI = Path("/usr/lib/python3/dist-packages/gi")
NVDEC_CAPS = ("video/x-h264,stream-format=byte-stream,alignment=au;"
              "video/x-h265,stream-format=byte-stream,alignment=au")
SOFTWARE = ("filesrc", "qtdemux", "matroskademux", "avidemux", "queue", "h264parse", "h265parse", "decodebin",
            "avdec_h264", "avdec_h265", "videoconvert", "capsfilter", "appsink")
PACKAGES = ("python3-gi gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
            " gstreamer1.0-plugins-bad gstreamer1.0-libav")
NAMES = ("nvv4l2decoder", "nvvidconv", "nvarguscamerasrc")
_types: dict[str, Any] = {}


def gst() -> Any:
    """PyGObject's Gst, initialised, with every element the software pipelines need; else pytest.skip (reason)."""
    try:
        import gi
    except ImportError:
        if not any((SYSTEM_GI / f"_gi{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            pytest.skip(f"needs PyGObject for this Python (apt-get install --no-install-recommends {PACKAGES})")
        shim = Path(tempfile.mkdtemp(prefix="edge-gi-"))            # only `gi`: nothing else of Debian's packages
        (shim / "gi").symlink_to(SYSTEM_GI)
        sys.path.append(str(shim))
        import gi
    try:
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except ValueError as exc:
        pytest.skip(f"needs GStreamer's typelib ({exc}; apt-get install --no-install-recommends {PACKAGES})")
    Gst.init(None)
    missing = [name for name in SOFTWARE if Gst.ElementFactory.find(name) is None]
    if missing:
        pytest.skip(f"needs the GStreamer elements {', '.join(missing)} (apt-get install --no-install-recommends"
                    f" {PACKAGES})")
    return Gst


def _define(Gst: Any) -> dict[str, Any]:
    """The stand-in element types, defined once per process (GObject types cannot be defined twice)."""
    if _types:
        return _types
    from gi.repository import GObject

    class Decoder(Gst.Bin):
        __gtype_name__ = "EdgeStandInNvV4l2Decoder"
        enable_max_performance = GObject.Property(type=bool, default=False, nick="enable-max-performance")
        disable_dpb = GObject.Property(type=bool, default=False, nick="disable-dpb")

        def __init__(self) -> None:
            super().__init__()
            caps = Gst.ElementFactory.make("capsfilter")
            caps.set_property("caps", Gst.Caps.from_string(NVDEC_CAPS))
            decode = Gst.ElementFactory.make("decodebin")
            self.add(caps)
            self.add(decode)
            caps.link(decode)
            self.add_pad(Gst.GhostPad.new("sink", caps.get_static_pad("sink")))
            source = Gst.GhostPad.new_no_target("src", Gst.PadDirection.SRC)
            self.add_pad(source)
            decode.connect("pad-added", lambda element, pad: source.set_target(pad))

    class Converter(Gst.Bin):
        __gtype_name__ = "EdgeStandInNvVidConv"
        flip_method = GObject.Property(type=int, default=0, nick="flip-method")

        def __init__(self) -> None:
            super().__init__()
            convert = Gst.ElementFactory.make("videoconvert")
            self.add(convert)
            self.add_pad(Gst.GhostPad.new("sink", convert.get_static_pad("sink")))
            self.add_pad(Gst.GhostPad.new("src", convert.get_static_pad("src")))

    class CameraSource(Gst.Bin):
        __gtype_name__ = "EdgeStandInNvArgusCameraSrc"
        sensor_id = GObject.Property(type=int, default=0, nick="sensor-id")

        def __init__(self) -> None:
            super().__init__()
            self.add_pad(Gst.GhostPad.new_no_target("src", Gst.PadDirection.SRC))     # any caps, no frames

    _types.update(nvv4l2decoder=Decoder, nvvidconv=Converter, nvarguscamerasrc=CameraSource)
    return _types


@contextlib.contextmanager
def installed() -> Iterator[Any]:
    """NVIDIA's element names in this process's GStreamer registry for the block, removed after it; yields Gst."""
    Gst = gst()
    for name, kind in _define(Gst).items():
        assert Gst.Element.register(None, name, Gst.Rank.NONE, kind.__gtype__)
    try:
        yield Gst
    finally:
        registry = Gst.Registry.get()
        for name in NAMES:
            factory = Gst.ElementFactory.find(name)
            if factory is not None:
                registry.remove_feature(factory)


def elements(pipeline: Any) -> list[tuple[str, Any]]:
    """(factory name, element) of a parsed pipeline's elements, from its source to its sink (inside bins made by
    parse_launch too, but not inside the stand-ins' own bins)."""
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    found = []
    iterator = pipeline.iterate_sorted()                     # sinks first
    while True:
        result, element = iterator.next()
        if result != Gst.IteratorResult.OK:
            break
        factory = element.get_factory()
        found.append((factory.get_name() if factory else type(element).__name__, element))
    return found[::-1]
