"""A real RTSP camera on 127.0.0.1 for tests: GStreamer's RTSP server, run by Debian's /usr/bin/python3 (python3-gi)
in a process of its own, so that a test can kill it (a camera lost) and start it again (recovered). `require` skips
the test with the reason and the packages where that server or an element of its stream is missing; scripts/test.sh
installs PACKAGES where it can (docs/testing.md).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

PYTHON = "/usr/bin/python3"
PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
            " gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-rtsp")
ENCODERS = {"h264": ("x264enc", "rtph264pay"), "h265": ("x265enc", "rtph265pay")}
SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
if sys.argv[1] == "check":
    print(" ".join(name for name in sys.argv[2:] if Gst.ElementFactory.find(name) is None))
    sys.exit(0)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(sys.argv[2])
factory.set_shared(sys.argv[3] == "shared")
server.get_mount_points().add_factory("/live", factory)
server.attach(None)
print("serving", flush=True)
GLib.MainLoop().run()
"""


class Media(NamedTuple):
    """What the camera streams: an RTSPMediaFactory launch line, and the elements it needs."""

    launch: str
    elements: tuple[str, ...]


def clip(path: Path) -> Media:
    """An MP4 file's H.264 served as it is (no re-encode: the decoded frames are the file's bit for bit, and the
    server stays cheap)."""
    return Media(f"( filesrc location={path} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )",
                 ("filesrc", "qtdemux", "h264parse", "rtph264pay"))


def media(codec: str = "h264", *, audio: bool = False) -> Media:
    """A moving ball, 320x240 at 10 fps, in `codec` (h264, h265) with a key frame every second; with `audio`, an
    Opus stream beside it."""
    encoder, payloader = ENCODERS[codec]
    launch = (f"videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 ! {encoder}"
              f" tune=zerolatency speed-preset=ultrafast key-int-max=10 ! {payloader} name=pay0 pt=96")
    elements = ("videotestsrc", encoder, payloader)
    if audio:
        launch += " audiotestsrc is-live=true ! opusenc ! rtpopuspay name=pay1 pt=97"
        elements += ("audiotestsrc", "opusenc", "rtpopuspay")
    return Media(f"( {launch} )", elements)


def require(stream: Media) -> None:
    """pytest.skip, saying what is missing and what to install, unless Debian's Python runs the server and its
    GStreamer has every element of `stream`."""
    try:
        check = subprocess.run([PYTHON, "-c", SERVER, "check", *stream.elements], capture_output=True, text=True,
                               timeout=60)
    except OSError as exc:
        pytest.skip(f"needs {PYTHON} for GStreamer's RTSP server ({exc.strerror})")
    if check.returncode:
        said = (check.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"needs GStreamer's RTSP server for {PYTHON} ({said}; apt-get install --no-install-recommends"
                    f" {PACKAGES})")
    if check.stdout.strip():
        pytest.skip(f"needs the GStreamer elements {check.stdout.strip()} for the RTSP camera (apt-get install"
                    f" --no-install-recommends {PACKAGES})")


def serve(port: int, stream: Media, *, shared: bool = True) -> subprocess.Popen:
    """The camera at rtsp://127.0.0.1:PORT/live, listening when this returns; the caller kills it. `shared`: one
    pipeline for every client (RTSPMediaFactory.set_shared), else one each."""
    server = subprocess.Popen([PYTHON, "-c", SERVER, str(port), stream.launch, "shared" if shared else "own"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if server.stdout.readline().strip() != "serving":
        server.kill()
        server.wait()
        raise AssertionError(f"the RTSP server on port {port} did not start (exit code {server.returncode})")
    return server
