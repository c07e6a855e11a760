"""NVDEC on a discrete GPU: a camera reader that decodes file:// and rtsp:// H.264/H.265 with PyNvVideoCodec (the
optional `nvdec` extra, pinned) into device memory and hands out NV12 DeviceFrames from its own SurfacePool. Which
reader a camera gets (`decode: auto|cpu|nvdec`): edge/pipeline/runtime.py, Decoding.

The compressed packets come from FFmpeg through OpenCV's raw mode, the CPU reader's own open (open_reader with
packets=True: the same timeouts, frame rate, declared size and frame count): PyNvVideoCodec's demuxer holds the
GIL while FFmpeg waits on the network. The design, the colour rules and the measurement: docs/gpu.md section 8.
"""
from __future__ import annotations

import collections
from types import ModuleType
from typing import Any

import numpy as np

from edge.config.cameras import CameraURI
from edge.errors import EngineError, SourceError
from edge.gpu import cuda
from edge.gpu.surfaces import DeviceFrame, SurfacePool
from edge.log import get_logger
from edge.opencv import import_cv2
from edge.pipeline.clock import stream_ns
from edge.pipeline.readers import open_reader
from edge.pipeline.sources import Refused, SurfaceWait

log = get_logger("nvdec")

SCHEMES = ("file", "rtsp")  # the cameras this reader opens

# The codecs edge takes from NVDEC, by the FOURCC OpenCV reports for the stream: (PyNvVideoCodec's name, shown name)
CODECS = {"h264": ("H264", "H.264"), "avc1": ("H264", "H.264"), "avc3": ("H264", "H.264"),
          "hevc": ("HEVC", "H.265"), "hev1": ("HEVC", "H.265"), "hvc1": ("HEVC", "H.265"), "h265": ("HEVC", "H.265")}
DECODE_DELAY = 4            # frames one Decode call may return at once: the decoder's default (NATIVE) latency
PRIME_PACKETS = 300         # packets read at open for the first frame (a 10 s GOP at 30 fps) before giving up
INSTALL_HINT = "pip install 'edge[nvdec]' (PyNvVideoCodec 2.2.4) on a PC with an NVIDIA GPU and driver"
CPU_HINT = "set `decode: cpu` for this camera (or `auto`, which falls back to the CPU by itself)"
NO_PTS = -1                 # PacketData.pts (int64, here in µs) of a packet without a usable stream time
MAX_PTS_US = 2 ** 53        # beyond this a pts in µs is no exact int64 from a float: treated as none


def load() -> ModuleType:
    """PyNvVideoCodec; Refused when it is missing or does not load (it checks the driver as it imports)."""
    try:
        import PyNvVideoCodec
    except ImportError as exc:
        raise Refused("PyNvVideoCodec is not installed", hint=INSTALL_HINT) from exc
    except Exception as exc:  # noqa: BLE001 - its import raises RuntimeError for a driver it cannot use
        raise Refused("PyNvVideoCodec does not load", note=str(exc).strip().splitlines()[0],
                      hint="check the NVIDIA driver (nvidia-smi) and, in a container, the `video` driver capability"
                      ) from exc
    return PyNvVideoCodec


def check_gpu() -> None:
    """Refused unless a discrete CUDA GPU is here (a Jetson's NVDEC is reached through GStreamer instead)."""
    try:
        integrated = cuda.integrated()
    except EngineError as exc:
        raise Refused(f"no usable CUDA GPU: {exc.what}", note=exc.note, hint=exc.hint) from exc
    except Exception as exc:  # noqa: BLE001 - pycuda's errors when the driver has no device
        raise Refused("no usable CUDA GPU", note=str(exc), hint="check the NVIDIA driver (nvidia-smi)") from exc
    if integrated:
        raise Refused("this is an integrated GPU (a Jetson): its NVDEC is reached through GStreamer, not"
                      " PyNvVideoCodec, and GStreamer here lacks NVIDIA's nvv4l2decoder or nvvidconv",
                      hint="install JetPack's nvidia-l4t-gstreamer and python3-gi (docs/gpu.md section 7), or set"
                           " `decode: cpu`")


def open_nvdec_reader(uri: CameraURI, max_frame: tuple[int, int], *, surfaces: int,
                      camera_id: str = "") -> NvdecReader:
    """Open a file:// or rtsp:// camera on NVDEC, its frames from `surfaces` + DECODE_DELAY surfaces (`surfaces`: at
    least the lanes' frames in flight + 2); `camera_id` (where known) names the camera in the lines logged while it
    runs. Refused where it cannot run here or does not take the stream; another SourceError for the source itself."""
    if uri.scheme not in SCHEMES:
        raise Refused(f"{uri.scheme}:// cameras do not go through NVDEC", hint="file:// and rtsp:// do; " + CPU_HINT)
    nvc = load()
    check_gpu()
    return NvdecReader(uri, max_frame, surfaces, nvc, camera_id)


def colour(nvc: ModuleType, uri: CameraURI, size: tuple[int, int]) -> tuple[str, bool, str]:
    """(matrix, full_range, where from) of a stream: a file's own colour description (PyNvVideoCodec's demuxer,
    which maps FFmpeg's colorspace and color_range), else BT.709 for HD (720 rows or more) and BT.601 below,
    limited range. An RTSP stream is not probed: that demuxer would hold the GIL on the network."""
    matrix = full_range = None
    if uri.scheme == "file":
        try:
            demuxer = nvc.CreateDemuxer(filename=uri.location)
        except nvc.PyNvVCException as exc:
            raise Refused(f"PyNvVideoCodec's demuxer cannot open video file {uri.location}",
                          note=_one_line(exc), hint=CPU_HINT) from exc
        matrix = {nvc.ColorSpace.BT_601: "bt601", nvc.ColorSpace.BT_709: "bt709"}.get(demuxer.ColorSpace())
        full_range = {nvc.ColorRange.MPEG: False, nvc.ColorRange.JPEG: True}.get(demuxer.ColorRange())
    said = [part for part, known in (("matrix", matrix), ("range", full_range)) if known is not None]
    if matrix is None:
        matrix = "bt709" if size[1] >= 720 else "bt601"
    if full_range is None:
        full_range = False
    source = f"{' and '.join(said)} from the stream" if said else "assumed: the stream says nothing"
    return matrix, full_range, f"{matrix.upper().replace('BT', 'BT.')} {'full' if full_range else 'limited'}" \
                               f" range, {source}"


class NvdecReader:
    """A camera reader of NV12 DeviceFrames decoded by NVDEC from a file:// or rtsp:// H.264/H.265 stream.

    It opens the stream's packets, refuses what NVDEC does not take (Refused: the codec, a 10-bit or 4:2:2/4:4:4
    stream) and decodes the first frame before it returns, so a refusal comes at open. The decoder runs on the
    reader's CUDA stream; each decoded frame is copied on that stream into a surface of the reader's pool
    (`surfaces` + DECODE_DELAY of them, sized by the first frame) before the next Decode call may reuse the
    decoder's buffer, and the frame's ready event is recorded after the copy. `read` returns None at the end of
    the stream (the decoder's delayed frames flushed first) or when the stream fails, as the CPU reader does.
    Each packet's stream time goes into the decoder as its pts (µs), and each decoded frame comes out with its own
    (display order differs from decode order with B-frames): `pts_ms` is the last returned frame's, None where its
    packet had none (docs/protocol.md, "Capture time").
    """

    def __init__(self, uri: CameraURI, max_frame: tuple[int, int], surfaces: int, nvc: ModuleType,
                 camera_id: str = "") -> None:
        self.what = f"video file {uri.location}" if uri.scheme == "file" else f"RTSP stream {uri.redacted()}"
        self._camera = f"{camera_id}: " if camera_id else ""     # names the camera in lines logged while it runs
        self._said = self._camera + self.what
        self.frames = 0                 # decoded, the dropped ones too (the file's length check counts them)
        self._wait = SurfaceWait(self._said, lossless=uri.lossless)
        self._nvc = nvc
        self._packets = open_reader(uri, max_frame, packets=True)
        self.fps = self._packets.fps
        self.declared_frames = self._packets.declared_frames
        self._ready: collections.deque[tuple[DeviceFrame, float | None]] = collections.deque()   # with its pts_ms
        self.pts_ms: float | None = None    # the stream time of the frame `read` returned last
        self._ended = False
        self._index = 0
        self._decoder: Any = None
        self._pool: SurfacePool | None = None
        self._context: Any = None
        self._stream: Any = None
        try:
            self._open(uri, surfaces)
        except BaseException:
            self.close()
            raise

    def _open(self, uri: CameraURI, surfaces: int) -> None:
        capture = self._packets.capture
        cv2 = import_cv2()
        fourcc = (int(capture.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1")
        if fourcc.lower() not in CODECS:
            raise Refused(f"{self.what} is coded as {fourcc!r}, not H.264 or H.265: NVDEC is used for those only",
                          hint=CPU_HINT + "; or re-encode the source to H.264/H.265")
        name, self.codec = CODECS[fourcc.lower()]
        self._uri, self._surfaces = uri, surfaces
        self._context = cuda.Context()
        with self._context.current():
            self._stream = cuda.Stream()
            self._decoder = self._nvc.CreateDecoder(gpuid=0, codec=getattr(self._nvc.cudaVideoCodec, name),
                                                    cudacontext=self._context.handle,
                                                    cudastream=self._stream.handle, usedevicememory=True)
        ok, extradata = capture.retrieve(flag=int(capture.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX)))
        if ok and extradata is not None and _annex_b(extradata.ravel()):
            self._decode(extradata.ravel(), prime=True)     # parameter sets only there (RTSP's SDP): decode them first
        for _ in range(PRIME_PACKETS):
            if self._ready or self._ended:
                break
            self._step(prime=True)
        if not self._ready:
            raise SourceError(f"{self.what}: NVDEC decoded no frame from its first {self._index} packets",
                              hint="check the stream with `ffprobe`; " + CPU_HINT)

    def read(self) -> DeviceFrame | None:
        """The next frame, or None at the end of the stream or when it failed."""
        try:
            while not self._ready and not self._ended:
                self._step(prime=False)
        except SourceError as exc:
            log.error("%s%s. Hint: %s", self._camera, exc.summary(), exc.hint)
            self._ended = True
        if not self._ready:
            return None
        frame, self.pts_ms = self._ready.popleft()
        return frame

    @property
    def dropped(self) -> int:
        """Decoded frames dropped because every surface was still held (SurfaceWait)."""
        return self._wait.dropped

    def _step(self, *, prime: bool) -> None:
        """Decode the next packet; at the end of the packets, flush the decoder's delayed frames."""
        packet = self._packets.read()
        if packet is None:
            self._ended = True
            self._decode(None, prime=prime)
        else:
            self._decode(packet.ravel(), prime=prime, pts_ms=self._packets.pts_ms)

    def _decode(self, data: np.ndarray | None, *, prime: bool, pts_ms: float | None = None) -> None:
        nvc = self._nvc
        packet = nvc.PacketData()       # bsl 0: the end of the stream, which flushes the decoder
        if data is not None:
            packet.bsl_data, packet.bsl, packet.pts = data.ctypes.data, data.size, packet_pts(pts_ms)
            self._index += 1
        try:
            decoded = self._decoder.Decode(packet)
        except (nvc.PyNvVCExceptionUnsupported, nvc.PyNvVCException) as exc:
            kind = Refused if prime else SourceError
            raise kind(f"NVDEC refused {self.what} ({self.codec})", note=_one_line(exc),
                       hint=CPU_HINT) from exc
        for frame in decoded:           # valid until the next Decode call: copied into surfaces now
            self._store(frame, prime=prime)

    def _store(self, decoded: Any, *, prime: bool) -> None:
        if decoded.format != self._nvc.Pixel_Format.NV12:
            kind = Refused if prime else SourceError
            raise kind(f"NVDEC decodes {self.what} ({self.codec}) to {decoded.format.name}, not NV12: a 10-bit or"
                       " 4:2:2/4:4:4 stream, which edge does not take from NVDEC", hint=CPU_HINT)
        luma, chroma = decoded.cuda()
        (height, width, _), pitch = luma.shape, luma.stride[0]
        sizes = (pitch * height, pitch * ((height + 1) // 2))      # the planes' bytes, rows `pitch` apart
        if self._pool is None:          # the first frame sizes the pool (the declared size was checked before)
            self._pool = SurfacePool(sum(sizes), self._surfaces + DECODE_DELAY)
            self.size = (width, height)
            self.matrix, self.full_range, said = colour(self._nvc, self._uri, self.size)
            self.description = f"PyNvVideoCodec {self._nvc.__version__}: {self.codec} {width}x{height}, {said}"
        if sum(sizes) > self._pool.nbytes:
            raise SourceError(f"{self.what} changed its frames to {width}x{height} from {self.size[0]}x{self.size[1]},"
                              " larger than its surfaces", hint="a live stream is opened again; a file ends here")
        self.frames += 1
        surface = self._wait.acquire(self._pool)
        if surface is None:
            return
        with self._context.current():   # on the decoder's stream, before its next Decode call reuses the buffer
            cuda.copy_device(surface.pointer, luma.data, sizes[0], self._stream)
            cuda.copy_device(surface.pointer + sizes[0], chroma.data, sizes[1], self._stream)
            ready = surface.ready_event()
            ready.record(self._stream)
        frame = surface.frame(pixel_format="nv12", width=width, height=height, pitch=pitch,
                              plane_offsets=(0, sizes[0]), matrix=self.matrix, full_range=self.full_range, ready=ready)
        self._ready.append((frame, frame_pts_ms(decoded.getPTS())))

    def close(self) -> None:
        """Stop decoding; the pool is retired: freed once every frame handed out was released (SurfacePool.retire)."""
        if self._packets is None:
            return
        self._packets.close()
        self._packets = None
        while self._ready:
            self._ready.popleft()[0].release(None)
        if self._context is not None:
            with self._context.current():
                self._decoder = None                # PyNvVideoCodec frees its decoder and buffers now
                if self._stream is not None:
                    self._stream.synchronize()      # the copies into surfaces are done
                    self._stream.free()
            self._context.detach()
        if self._pool is not None:
            self._pool.retire(self._said)


def packet_pts(pts_ms: float | None) -> int:
    """A packet's stream time as PacketData.pts: whole µs (the decoder hands it back with the frame), NO_PTS for
    one that is no time (edge/pipeline/clock.py's rule: none, NaN, negative...) or is over MAX_PTS_US."""
    ns = stream_ns(pts_ms)
    return NO_PTS if ns is None or ns >= MAX_PTS_US * 1000 else round(ns / 1000)


def frame_pts_ms(pts: int) -> float | None:
    """A decoded frame's pts (packet_pts's µs) as ms; None for NO_PTS (or any negative)."""
    return pts / 1000 if pts >= 0 else None


def _one_line(exc: Exception) -> str:
    """A PyNvVideoCodec exception's message on one line (it spreads the call, the code and the place over several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _annex_b(data: np.ndarray) -> bool:
    """True for H.264/H.265 data in Annex B form (start codes), as NVDEC's parser takes it; an MP4's extradata
    (avcC/hvcC) is not, and OpenCV's raw mode already puts its parameter sets into the first packet."""
    head = bytes(data[:4])
    return head.startswith(b"\0\0\1") or head == b"\0\0\0\1"
