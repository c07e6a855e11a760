"""Cameras through GStreamer on a Jetson: NVDEC (`nvv4l2decoder`) decodes file:// and rtsp:// H.264/H.265 and VIC
(`nvvidconv`) converts to BGRx in system memory; csi:// sensors come through `nvarguscamerasrc`. Here: the pipeline
strings, the probe that picks the demuxer and parser, the predicate for the Jetson elements, and GStreamer's errors
as SourceErrors (Refused where this path cannot take the camera here); the reader that runs a pipeline is
edge/pipeline/gstreamer_reader.py. Why GStreamer directly (PyGObject) and not OpenCV's GStreamer backend, what each
element property does, and what was checked where: docs/gpu.md, "Decode on a Jetson"."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from edge.config.cameras import CameraURI, parse_size, redact
from edge.errors import SourceError
from edge.pipeline.sources import OPEN_TIMEOUT_MS, Refused, read_timeout_ms, rtsp_transport

CODECS = {"h264": "H.264", "h265": "H.265"}        # the codecs NVDEC takes here, as messages name them
PARSERS = {"h264": "h264parse", "h265": "h265parse"}
DEPAYLOADERS = {"h264": "rtph264depay", "h265": "rtph265depay"}
CONTAINERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux", ".avi": "avidemux"}
ELEMENTARY = {".h264": "h264", ".264": "h264", ".h265": "h265", ".265": "h265", ".hevc": "h265"}
DECODER = "nvv4l2decoder enable-max-performance=1"
CONVERTER = "nvvidconv"
FRAME_CAPS = "video/x-raw,format=BGRx"
RTSP_LATENCY_MS = 200
JETSON_ELEMENTS = {"file": ("nvv4l2decoder", "nvvidconv"), "rtsp": ("nvv4l2decoder", "nvvidconv"),
                   "csi": ("nvarguscamerasrc", "nvvidconv")}

_CAPS_CODECS = {"video/x-h264": "h264", "video/x-h265": "h265"}      # a demuxer's video caps
_RTP_CODECS = {"H264": "h264", "H265": "h265"}                       # an RTSP stream's encoding-name
_INSTALL_HINT = ("on a Jetson: sudo apt-get install python3-gi gir1.2-gstreamer-1.0, and a venv made with"
                 " --system-site-packages (scripts/setup.sh makes it so there); elsewhere set decode: cpu")
_PLUGINS_HINT = ("`gst-inspect-1.0 ELEMENT` says whether an element is installed: NVIDIA's come with JetPack"
                 " (nvidia-l4t-gstreamer), h264parse/h265parse with gstreamer1.0-plugins-bad, qtdemux, matroskademux,"
                 " avidemux and rtspsrc with gstreamer1.0-plugins-good")


def quoted(value: str) -> str:
    """`value` as one gst-launch property value: double-quoted, with `\\` and `"` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def appsink(*, live: bool) -> str:
    """The sink the reader pulls from: a live source keeps only its newest frame, a file loses none (two decoded
    frames ahead); never synchronised to the clock (the camera paces a file itself); pulled, so no signals."""
    queue = "drop=true max-buffers=1" if live else "drop=false max-buffers=2"
    return f"appsink name=sink {queue} sync=false emit-signals=false"


def rtspsrc(uri: CameraURI) -> str:
    """rtspsrc over the camera's transport (TCP unless its URI says udp), failing after the camera open timeout (and
    over UDP after its read timeout without a packet), with a jitter buffer of RTSP_LATENCY_MS."""
    transport = rtsp_transport(uri)
    udp = f" timeout={read_timeout_ms(uri) * 1000}" if transport == "udp" else ""
    return (f"rtspsrc location={quoted(uri.location)} latency={RTSP_LATENCY_MS} protocols={transport}"
            f" tcp-timeout={OPEN_TIMEOUT_MS * 1000}{udp}")


def pipeline_description(uri: CameraURI, codec: str, demuxer: str | None) -> str:
    """The pipeline of a file:// or rtsp:// camera holding `codec` video: source (and `demuxer`'s first video
    stream, or an elementary stream), parser, NVDEC, VIC to BGRx, the appsink."""
    parser = PARSERS[codec]
    if uri.scheme == "rtsp":
        source = f"{rtspsrc(uri)} ! {DEPAYLOADERS[codec]} ! {parser}"
    elif demuxer is None:
        source = f"filesrc location={quoted(uri.location)} ! {parser}"
    else:
        source = f"filesrc location={quoted(uri.location)} ! {demuxer} name=demux demux.video_0 ! queue ! {parser}"
    return f"{source} ! {DECODER} ! {CONVERTER} ! {FRAME_CAPS} ! {appsink(live=uri.scheme == 'rtsp')}"


def csi_pipeline(uri: CameraURI, *, device: bool) -> str:
    """The nvarguscamerasrc pipeline of a Jetson CSI sensor: BGRx for the reader's mapped surfaces (`device`), or
    BGR for OpenCV's GStreamer backend (videoconvert on the CPU: OpenCV before 4.10 takes no BGRx)."""
    w, h = parse_size(uri.params.get("size", "1280x720"))
    flip = int(uri.params.get("flip", 0))
    head = (f"nvarguscamerasrc sensor-id={uri.location} ! video/x-raw(memory:NVMM),width={w},height={h},"
            f"framerate={framerate(uri.params.get('fps', 30.0))} ! {CONVERTER} flip-method={flip} ! {FRAME_CAPS} ! ")
    if device:
        return head + appsink(live=True)
    return head + "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false"


def framerate(fps: float) -> str:
    """`fps` (the URI's, 0.01..1000) as a caps framerate, a fraction: 30 -> 30/1, 29.97 -> 2997/100, 0.5 -> 1/2."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def probe_description(uri: CameraURI, demuxer: str | None) -> str:
    """What the probe runs to find the codec: a file's demuxer (its pads' caps), an RTSP camera's SDP (rtspsrc's
    select-stream, answered no: nothing is set up or streamed)."""
    if uri.scheme == "rtsp":
        return f"{rtspsrc(uri)} name=demux"
    return f"filesrc location={quoted(uri.location)} ! {demuxer} name=demux"


def import_gst() -> Any:
    """GStreamer's Python bindings (PyGObject's Gst), initialised; Refused when they cannot be imported."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as exc:
        raise Refused("GStreamer's Python bindings (PyGObject's Gst 1.0) cannot be imported", note=str(exc),
                      hint=_INSTALL_HINT) from exc
    if not Gst.is_initialized():
        Gst.init(None)
    return Gst


def missing_elements(gst: Any, names: tuple[str, ...]) -> list[str]:
    """The elements of `names` this machine's GStreamer does not have."""
    return [name for name in names if gst.ElementFactory.find(name) is None]


def has_jetson_elements() -> bool:
    """True where GStreamer has NVIDIA's Jetson elements, NVDEC's nvv4l2decoder and VIC's nvvidconv: there
    `decode: nvdec` means this module's reader."""
    try:
        gst = import_gst()
    except SourceError:
        return False
    return not missing_elements(gst, JETSON_ELEMENTS["file"])


def probe(gst: Any, uri: CameraURI) -> tuple[str, str | None, tuple[int, int]]:
    """(codec, demuxer, declared size) of a file:// or rtsp:// camera: an elementary stream by its file's suffix,
    else the first video stream's caps from the demuxer, or from the RTSP camera's SDP (size (0, 0): unknown)."""
    what = describe(uri)
    demuxer = None
    if uri.scheme == "file":
        suffix = Path(uri.location).suffix.lower()
        if suffix in ELEMENTARY:
            return ELEMENTARY[suffix], None, (0, 0)
        demuxer = CONTAINERS.get(suffix)
        if demuxer is None:
            known = ", ".join(sorted(set(CONTAINERS) | set(ELEMENTARY)))
            raise Refused(f"{what}: decode: nvdec reads the video files {known}, by their suffix",
                          hint="remux the file (ffmpeg -i IN -c copy OUT.mp4), or set decode: cpu for this camera")
    pipeline = gst.Pipeline.new(None)
    pipeline.add(parse(gst, probe_description(uri, demuxer), uri, bin_only=True))
    source = pipeline.get_by_name("demux")
    found: list[Any] = []

    def seen(caps: Any) -> None:
        structure = caps.get_structure(0)
        found.append(structure)
        if structure.get_name().startswith("video/") or structure.get_string("media") == "video":
            source.post_message(gst.Message.new_application(source, gst.Structure.new_empty("edge-probed")))

    def select(element: Any, number: int, caps: Any) -> bool:
        seen(caps)
        return False                                # set up no stream: the SDP said what we need

    if uri.scheme == "rtsp":
        source.connect("select-stream", select)
    else:
        source.connect("pad-added", lambda element, pad: seen(pad.get_current_caps() or pad.query_caps(None)))
        source.connect("no-more-pads", lambda element: element.post_message(
            gst.Message.new_application(element, gst.Structure.new_empty("edge-probed"))))
    try:
        pipeline.set_state(gst.State.PLAYING if uri.scheme == "rtsp" else gst.State.PAUSED)
        message = pipeline.get_bus().timed_pop_filtered(OPEN_TIMEOUT_MS * gst.MSECOND,
                                                        gst.MessageType.ERROR | gst.MessageType.APPLICATION)
    finally:
        pipeline.set_state(gst.State.NULL)
    video = next((s for s in found if s.get_name().startswith("video/") or s.get_string("media") == "video"), None)
    if video is None:
        if message is not None and message.type == gst.MessageType.ERROR:
            raise gst_error(message, uri)
        if message is None:
            raise SourceError(f"{what}: no answer within {OPEN_TIMEOUT_MS} ms", hint="check that the source is up")
        streams = ", ".join(_shown(s) for s in found) or "none"
        raise SourceError(f"{what} holds no video stream", note=f"streams: {streams}")
    codec = _RTP_CODECS.get(video.get_string("encoding-name") or "") or _CAPS_CODECS.get(video.get_name())
    if codec is None:
        raise Refused(f"{what} holds {_shown(video)} video, and decode: nvdec takes H.264 or H.265 only",
                      hint="set decode: cpu for this camera (FFmpeg decodes it on the CPU), or re-encode it:"
                           " ffmpeg -i IN -c:v libx264 OUT.mp4")
    ok_w, width = video.get_int("width")
    ok_h, height = video.get_int("height")
    return codec, demuxer, (width, height) if ok_w and ok_h else (0, 0)


def parse(gst: Any, description: str, uri: CameraURI, *, bin_only: bool) -> Any:
    """The pipeline (or, `bin_only`, a bin to put in one) that `description` describes; Refused naming what
    GStreamer refused (an element it does not have, a property the element does not know)."""
    try:
        return gst.parse_bin_from_description(description, False) if bin_only else gst.parse_launch(description)
    except Exception as exc:  # noqa: BLE001 - PyGObject raises GLib.Error, a class of its own
        message = getattr(exc, "message", str(exc))
        raise Refused(f"GStreamer cannot build the pipeline of {describe(uri)}: {scrub(message, uri)}",
                      note=scrub(description, uri), hint=_PLUGINS_HINT) from None


def gst_error(message: Any, uri: CameraURI) -> SourceError:
    """An ERROR message on a bus as a SourceError: GStreamer's words, the element (by its factory) and its details."""
    error, debug = message.parse_error()
    factory = message.src.get_factory() if hasattr(message.src, "get_factory") else None
    element = factory.get_name() if factory is not None else message.src.get_name()
    return SourceError(f"{describe(uri)}: {scrub(error.message, uri)}",
                       note=scrub(f"{element}: {debug or error.message}", uri).replace("\n", " "),
                       hint=_raw_credentials_hint(uri) + "check the path or the camera's address, and that the video"
                            " plays elsewhere (ffprobe FILE_OR_URL); `GST_DEBUG=3 edge run ...` shows what each"
                            " GStreamer element said")


def _raw_credentials_hint(uri: CameraURI) -> str:
    """A hint for an RTSP URL whose user name or password holds a raw `@` or `/`: rtspsrc takes the first `@` for
    the end of the credentials and the first `/` for the end of the host ("Unhandled error", "Could not open
    resource"), where edge's own parsing takes the last `@`. Empty for any other URI."""
    rest = uri.raw.partition("://")[2]
    credentials = rest.rpartition("@")[0] if uri.scheme == "rtsp" else ""
    if "@" not in credentials and "/" not in credentials:
        return ""
    return ("the user name or password holds a raw '@' or '/', which GStreamer's rtspsrc cannot parse: write it"
            " percent-encoded (@ as %40, / as %2F, % as %25) in the camera URI; else ")


def describe(uri: CameraURI) -> str:
    """How messages name the camera: its file, its redacted RTSP URL, its sensor."""
    return {"file": f"video file {uri.location}", "rtsp": f"RTSP stream {uri.redacted()}",
            "csi": f"CSI sensor {uri.location}"}.get(uri.scheme, uri.redacted())


def scrub(text: str, uri: CameraURI) -> str:
    """`text` with the camera's URI and the URL opened (and so its password) shown redacted, quoted as in a pipeline
    or not."""
    for shown in (uri.raw, uri.location):
        text = text.replace(quoted(shown), quoted(redact(shown))).replace(shown, redact(shown))
    return text


def _shown(structure: Any) -> str:
    """A stream's caps name, with the RTP encoding-name where there is one."""
    encoding = structure.get_string("encoding-name")
    return f"{structure.get_name()} ({encoding})" if encoding else structure.get_name()
