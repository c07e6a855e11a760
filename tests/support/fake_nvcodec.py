"""A stand-in of the part of PyNvVideoCodec 2.2.4 that edge/pipeline/nvdec.py calls, where there is no GPU: it
decodes for real, with PyAV, the Annex B packets it is given, into NV12 frames in the CUDA stand-in's memory
(tests/support/fake_cuda.py), so a reader's logic runs on real clips.

It follows the library's Python API and behaviour as its 2.2.4 wheel has them (the bindings' docstrings and
signatures, read from the module itself; the C++ of PyNvVideoCodec 2.x, src/PyNvVideoCodec/src/PyNvDecoder.cpp,
PyNvDemuxer.cpp, NvDemuxer.cpp, inc/DecoderCommon.hpp, and the Video Codec SDK's NvDecoder.h/.cpp it wraps):
- CreateDecoder(gpuid, codec, cudacontext, cudastream, usedevicememory, ...) -> a decoder whose Decode(PacketData)
  returns the frames ready for display, a list of DecodedFrame. A PacketData with bsl 0 is the end of the stream
  (CUVID_PKT_ENDOFSTREAM): the delayed frames come out. The decoder's output buffers are its own and reused by
  the next Decode call ("All frames that are available for display should be read before making a subsequent
  decode call", NvDecoder.h): a frame of an earlier call read again fails the test here.
- The output is written on the `cudastream` given (the trace shows ("nvdec", stream)), NV12 as one block per
  frame: luma rows `width` bytes apart, the interleaved chroma right after it (GenerateNativeOutput);
  DecodedFrame.cuda() gives the two planes' CAI views, shape (h, w, 1) / (h/2, w/2, 2), strides (w, 1, 1) /
  (w, 2, 1), and `format` its Pixel_Format: NV12, or P016 for a 10-bit stream.
- Timestamps: PacketData.pts is an int64 (pybind11 refuses a float: TypeError), passed to the parser as the
  packet's timestamp (NvDecoder::Decode sets CUVID_PKT_TIMESTAMP); the picture that starts in that packet carries
  it to display (CUVIDPARSERDISPINFO.timestamp), so a DecodedFrame's `timestamp` (and `getPTS()`) is its own
  packet's pts in display order, whatever the decode order. The stand-in gives each picture the pts of the packets
  with a picture in them, in order (PyAV's parser hands out access units a packet late), and lets PyAV's decoder
  reorder them with the frames.
- A codec the GPU has no decoder for raises PyNvVCExceptionUnsupported at the first Decode, when the parser sees
  the sequence header ("Codec not supported on this GPU"): set UNSUPPORTED to emulate such a GPU.
- CreateDemuxer(filename).ColorSpace()/ColorRange(): the container's colour description, mapped as
  NvDemuxer::GetColorSpace/GetColorRange do (BT709 -> BT_709, BT470BG/SMPTE170M -> BT_601, else UNSPEC; MPEG,
  JPEG, else UDEF); a file FFmpeg cannot open raises PyNvVCException.
"""
from __future__ import annotations

import collections
import ctypes
import enum
from collections.abc import Iterator
from types import ModuleType

import av
import numpy as np
import pytest

from tests.support import fake_cuda

__version__ = "2.2.4"
UNSUPPORTED: set[cudaVideoCodec] = set()        # codecs "this GPU" has no decoder for
decoders: list[PyNvDecoder] = []                # every decoder made, for tests to inspect


class PyNvVCException(Exception):
    pass


class PyNvVCExceptionUnsupported(Exception):    # not a subclass of PyNvVCException in 2.2.4 (both derive Exception)
    pass


class cudaVideoCodec(enum.IntEnum):
    MPEG4 = 2
    H264 = 4
    HEVC = 8


class Pixel_Format(enum.IntEnum):
    NV12 = 3
    P016 = 5


class ColorSpace(enum.IntEnum):
    BT_601 = 0
    BT_709 = 1
    UNSPEC = 2


class ColorRange(enum.IntEnum):
    MPEG = 0
    JPEG = 1
    UDEF = 2


class PacketData:
    def __init__(self) -> None:
        self.bsl = 0
        self.bsl_data = 0
        self._pts = 0

    @property
    def pts(self) -> int:
        return self._pts

    @pts.setter
    def pts(self, value: int) -> None:      # pybind11's int64_t: an int (not a float) within int64
        if not isinstance(value, int) or not -2 ** 63 <= value < 2 ** 63:
            raise TypeError(f"(): incompatible function arguments: pts = {value!r} is no int64")
        self._pts = value


class CAIMemoryView:
    def __init__(self, shape: list[int], stride: list[int], data: int) -> None:
        self.shape, self.stride, self.data = shape, stride, data


class DecodedFrame:
    def __init__(self, decoder: PyNvDecoder, generation: int, format: Pixel_Format, views: list[CAIMemoryView],
                 timestamp: int) -> None:
        self._decoder, self._generation, self._views = decoder, generation, views
        self.format = format
        self._timestamp = timestamp

    @property
    def timestamp(self) -> int:             # def_readonly
        return self._timestamp

    def getPTS(self) -> int:
        return self._timestamp

    def cuda(self) -> list[CAIMemoryView]:
        if self._generation != self._decoder.generation:
            raise AssertionError("a DecodedFrame read after the next Decode call reused its buffer (NvDecoder.h)")
        return self._views


class PyNvDecoder:
    def __init__(self, codec: cudaVideoCodec, context: int, stream: int) -> None:
        self.codec, self.context, self.stream = codec, context, stream
        self.generation = 0
        self.packets: list[bytes] = []          # what Decode was given, in order
        self.given_pts: list[int] = []          # and the PacketData.pts of each
        self.ended = False
        self._av = av.CodecContext.create({cudaVideoCodec.H264: "h264", cudaVideoCodec.HEVC: "hevc"}[codec], "r")
        self._buffers: list[np.ndarray] = []
        self._pts: collections.deque[int] = collections.deque()    # of the packets with a picture not yet parsed

    def Decode(self, packet: PacketData) -> list[DecodedFrame]:
        if self.ended:
            raise AssertionError("Decode after the end of the stream")
        self.generation += 1
        data = ctypes.string_at(packet.bsl_data, packet.bsl) if packet.bsl else b""
        self.packets.append(data)
        self.given_pts.append(packet.pts)
        if data and self.codec in UNSUPPORTED:
            raise PyNvVCExceptionUnsupported("Codec not supported on this GPU")
        self.ended = not data
        if data and _pictures(data, self.codec):
            self._pts.append(packet.pts)
        try:                            # a parser first, as NVDEC's: it takes parameter sets alone, and keeps them
            frames = []
            for unit in self._av.parse(data or None):
                if _pictures(bytes(unit), self.codec):
                    unit.pts = self._pts.popleft()
                frames += self._av.decode(unit)
            frames += [] if data else self._av.decode(None)
        except av.error.InvalidDataError as exc:
            raise PyNvVCException(f"cuvidParseVideoData returned error: {exc}") from exc
        return [self._output(index, frame) for index, frame in enumerate(frames)]

    def _output(self, index: int, frame: av.VideoFrame) -> DecodedFrame:
        width, height = frame.width + frame.width % 2, frame.height
        ten_bit = frame.format.name.endswith("10le")    # P016 then: 16 bits a sample, left as zeros (PyAV 18 has
        nv12 = np.zeros(width * (height + height // 2) * 2, np.uint8) if ten_bit else \
            frame.to_ndarray(format="nv12").reshape(-1)  # no P010 arrays; edge refuses such frames by their format)
        while len(self._buffers) <= index:          # NvDecoder allocates an output buffer when it has too few
            self._buffers.append(np.zeros(0, np.uint8))
        if self._buffers[index].size < nv12.size:
            fake_cuda.ledger.memory.pop(self._buffers[index].ctypes.data, None)
            self._buffers[index] = np.zeros(nv12.size, np.uint8)
            fake_cuda.ledger.memory[self._buffers[index].ctypes.data] = self._buffers[index]
        buffer = self._buffers[index]
        buffer[:nv12.size] = nv12
        fake_cuda.ledger.trace.append(("nvdec", self.stream))
        pointer, size = buffer.ctypes.data, 2 if ten_bit else 1
        chroma = pointer + width * height * size
        views = [CAIMemoryView([height, width, 1], [width * size, size, 1], pointer),
                 CAIMemoryView([height // 2, width // 2, 2], [width * size, 2 * size, 1], chroma)]
        if frame.pts is None:
            raise AssertionError("a decoded frame without the pts of its packet: the stand-in lost track")
        return DecodedFrame(self, self.generation, Pixel_Format.P016 if ten_bit else Pixel_Format.NV12, views,
                            frame.pts)

    def free(self) -> None:
        for buffer in self._buffers:
            fake_cuda.ledger.memory.pop(buffer.ctypes.data, None)
        self._buffers = []


def _pictures(data: bytes, codec: cudaVideoCodec) -> bool:
    """True where Annex B `data` holds a coded picture (a VCL NAL unit: H.264 types 1-5, H.265 types 0-31)."""
    start = data.find(b"\0\0\1")
    while 0 <= start < len(data) - 3:
        header = data[start + 3]
        if (1 <= header & 0x1F <= 5) if codec == cudaVideoCodec.H264 else (header >> 1) & 0x3F < 32:
            return True
        start = data.find(b"\0\0\1", start + 3)
    return False


def CreateDecoder(gpuid: int = 0, codec: cudaVideoCodec = cudaVideoCodec.H264, cudacontext: int = 0,
                  cudastream: int = 0, usedevicememory: bool = False) -> PyNvDecoder:
    if codec not in (cudaVideoCodec.H264, cudaVideoCodec.HEVC) or not usedevicememory or not cudastream:
        raise AssertionError("the stand-in decodes H.264/H.265 into device memory on a stream the caller made")
    if fake_cuda.ledger.current <= 0:
        raise AssertionError("CreateDecoder with the caller's context given but not current")
    decoder = PyNvDecoder(codec, cudacontext, cudastream)
    decoders.append(decoder)
    return decoder


class PyNvDemuxer:
    """Its colour is the container's: 2.2.4's FFmpeg (libavformat without libavcodec's parsers) reports an MP4's
    `colr` box and not the bitstream's VUI (measured: an x265 clip's limited range read as UDEF, the 1080p clip's
    `colr` as BT_709 MPEG), so the stand-in reads the `colr` box (nclx: ISO/IEC 23001-8 codes) of MP4 files."""

    def __init__(self, filename: str) -> None:
        try:
            av.open(filename).close()
        except (av.error.FFmpegError, IndexError) as exc:
            raise PyNvVCException(f"CreateFormatContext : avformat_open_input returned error \"{exc}\"") from exc
        data = open(filename, "rb").read()
        box = data.find(b"colrnclx")
        self._space, self._full = (int.from_bytes(data[box + 12:box + 14], "big"), data[box + 14] >> 7) \
            if box >= 0 else (None, None)

    def ColorSpace(self) -> ColorSpace:
        return {1: ColorSpace.BT_709, 5: ColorSpace.BT_601, 6: ColorSpace.BT_601}.get(self._space, ColorSpace.UNSPEC)

    def ColorRange(self) -> ColorRange:
        return {0: ColorRange.MPEG, 1: ColorRange.JPEG}.get(self._full, ColorRange.UDEF)


def CreateDemuxer(filename: str) -> PyNvDemuxer:
    return PyNvDemuxer(filename)


def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Put this module in place of PyNvVideoCodec (and the CUDA stand-in in place of CUDA) for one test."""
    import sys

    fake_cuda.install(monkeypatch)
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    monkeypatch.setattr(module, "UNSUPPORTED", set())
    monkeypatch.setattr(module, "decoders", [])
    yield module
    for decoder in module.decoders:
        decoder.free()
