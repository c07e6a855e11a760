"""GPU preprocessing: one CUDA kernel letterboxes a frame straight into an engine's input.

`GpuLetterbox` letterboxes + resizes + converts to RGB + scales by 1/255 + writes CHW into the engine's device
buffer in fp32 or fp16, in one kernel (edge/gpu/kernels.py). It takes a host BGR uint8 frame (`run`: staged in
pinned memory and uploaded on the caller's stream; with `zero_copy` the kernel reads the mapped buffer in place),
or a frame already at device addresses (`launch_planes`: BGR, BGRx, RGBA or NV12 of BT.601/BT.709, limited or
full range; a mapped host buffer's device pointer too). It returns the same `Letterbox` as the CPU path
(edge/letterbox.py), and the same values as that path on `to_bgr` of the frame: bit-identical in fp32, the CPU's
fp32 cast to fp16 in fp16 (MAX_ABS_DIFF); `to_bgr` of BT.601 limited NV12 is OpenCV's cvtColor. One instance
holds one frame; a kernel is compiled at first use (edge/gpu/nvrtc.py). The arithmetic, how a slot uses it and
where it was checked: docs/gpu.md section 3; what it costs: section 5.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import EngineError
from edge.gpu import nvrtc
from edge.gpu.kernels import (
    BLOCK,
    CUBIN_NAME,
    DTYPES,
    FUNCTIONS,
    KERNEL_SOURCE,
    MATRICES,
    PIXEL_FORMATS,
    SIGNATURES,
    YUV_SHIFT,
    PixelFormat,
    yuv_coefficients,
)
from edge.letterbox import INV255, FrameError, Letterbox, check_frame

if TYPE_CHECKING:
    from edge.gpu.cuda import Stream

# max |GPU - CPU| against OpenCV's vectorised resize, per output dtype (docs/gpu.md section 3 says why)
MAX_ABS_DIFF = {np.dtype(np.float32): 0.0, np.dtype(np.float16): 2.0 ** -12}


def output_geometry(input_shape: Sequence[int], dtype: Any) -> tuple[int, int, np.dtype]:
    """(height, width, dtype) of an engine input [N,3,H,W] in fp32 or fp16; EngineError otherwise."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or shape[0] < 1 or shape[1] != 3 or min(shape[2:]) < 1:
        raise EngineError("GPU preprocessing needs an engine input of shape [N,3,H,W]", note=f"got {shape}",
                          hint="use the CPU preprocessing (edge.letterbox) for other input layouts")
    kind = np.dtype(dtype)
    if kind not in DTYPES:
        raise EngineError("GPU preprocessing writes fp32 or fp16 engine inputs", note=f"got {kind}",
                          hint="build the engine with a float32 or float16 input (keep IO types when converting)")
    return shape[2], shape[3], kind


def _layout(pixel_format: str, matrix: str, full_range: bool) -> PixelFormat:
    """The layout of a known pixel format; FrameError for an unknown format, matrix or range."""
    if pixel_format not in PIXEL_FORMATS:
        raise FrameError(f"unknown pixel format {pixel_format!r}", note=f"known: {', '.join(PIXEL_FORMATS)}",
                         hint="a decoder's frames are nv12, a colour converter's bgrx or rgba, a host frame's bgr")
    if matrix not in MATRICES:
        raise FrameError(f"unknown colour matrix {matrix!r}", note=f"known: {', '.join(MATRICES)}",
                         hint="take the matrix the stream signals (H.264/H.265 VUI matrix_coefficients: 1 is bt709,"
                              " 5 and 6 are bt601); unsignalled SD video is bt601, HD bt709")
    if full_range not in (False, True):
        raise FrameError("full_range must be True or False", note=f"got {full_range!r}",
                         hint="limited range (16-235) is False; the stream's video_full_range_flag says which")
    return PIXEL_FORMATS[pixel_format]


def _check_size(pixel_format: str, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise FrameError(f"expected a non-empty {pixel_format} frame", note=f"width {width}, height {height}",
                         hint="pass the frame's size in pixels")
    if pixel_format == "nv12" and (width % 2 or height % 2):
        raise FrameError("an nv12 frame needs an even width and height", note=f"{width}x{height}",
                         hint="4:2:0 video has even sizes (H.264/H.265 crop in units of 2 pixels): pass the"
                              " decoder's size; OpenCV's cvtColor refuses odd sizes too")


def check_planes(planes: Sequence[int], pitch: int, width: int, height: int, pixel_format: str, matrix: str,
                 full_range: bool) -> None:
    """FrameError unless the planes, pitch and size describe a frame `launch_planes` can read."""
    layout = _layout(pixel_format, matrix, full_range)
    _check_size(pixel_format, width, height)
    if len(planes) != layout.planes:
        raise FrameError(f"a {pixel_format} frame has {layout.planes} plane(s)", note=f"got {len(planes)} pointers",
                         hint="nv12: (luma, chroma); bgr, bgrx, rgba: (pixels,)")
    if any(pointer <= 0 for pointer in planes):
        raise FrameError(f"a {pixel_format} frame's plane is at no device address",
                         note=f"planes {', '.join(hex(p) for p in planes)}",
                         hint="pass device pointers (a mapped host buffer's device_pointer() for zero copy)")
    row = width * layout.bytes_per_pixel
    if pitch < row:
        raise FrameError(f"a row of a {width} pixels wide {pixel_format} frame takes {row} bytes at least",
                         note=f"pitch {pitch} bytes", hint="pitch is the distance between rows in bytes (the"
                                                           " decoder's surface pitch), not the width in pixels")


def to_bgr(planes: Sequence[np.ndarray], pixel_format: str, *, matrix: str = "bt601",
           full_range: bool = False) -> np.ndarray:
    """A new HxWx3 uint8 BGR image of host planes, with the kernels' arithmetic (the CPU path of a device frame,
    and the tests' oracle): bgr, bgrx, rgba: (HxWx3 or HxWx4 uint8,); nv12: (HxW luma, H/2xW or H/2xW/2x2
    interleaved U,V), converted as edge/gpu/kernels.py's yuv_coefficients say. FrameError for anything else."""
    layout = _layout(pixel_format, matrix, full_range)
    arrays = list(planes)
    shapes = [a.shape if isinstance(a, np.ndarray) and a.dtype == np.uint8 else type(a).__name__ for a in arrays]
    first = arrays[0] if arrays and isinstance(arrays[0], np.ndarray) else None
    height, width = first.shape[:2] if first is not None and first.ndim >= 2 else (0, 0)
    if layout.rgb is not None:
        wanted = [(height, width, layout.bytes_per_pixel)]
    else:
        wanted = [(height, width), (height // 2, width)]
        if len(arrays) == 2 and shapes[1] == (height // 2, width // 2, 2):
            wanted[1] = shapes[1]
    if shapes != wanted or width < 1 or height < 1:
        raise FrameError(f"expected the uint8 planes of a {pixel_format} frame", note=f"got {shapes}",
                         hint="bgr, bgrx, rgba: [HxWxC]; nv12: [HxW luma, H/2xW interleaved U,V]")
    if layout.rgb is not None:
        return np.ascontiguousarray(first[:, :, layout.rgb[::-1]])
    _check_size(pixel_format, width, height)
    k = yuv_coefficients(matrix, bool(full_range))
    luma = np.maximum(first.astype(np.int32) - k.y_offset, 0) * k.cy + (1 << (YUV_SHIFT - 1))
    uv = arrays[1].reshape(height // 2, width // 2, 2).astype(np.int32) - 128
    u, v = (uv[:, :, i].repeat(2, axis=0).repeat(2, axis=1) for i in (0, 1))     # each 2x2 block's U,V
    out = np.empty((height, width, 3), np.uint8)
    for channel, (cu, cv) in enumerate(((k.cub, 0), (k.cug, k.cvg), (0, k.cvr))):  # B, G, R
        np.clip((luma + cu * u + cv * v) >> YUV_SHIFT, 0, 255, out=out[:, :, channel], casting="unsafe")
    return out


class GpuLetterbox:
    """Letterbox a frame into one [3,H,W] image of an engine input on a CUDA stream.

    Create, run and free it with the primary context current (edge.gpu.cuda.Context.current())."""

    def __init__(self, input_shape: Sequence[int], dtype: Any, *, fill: float = 0.5, zero_copy: bool = False,
                 cache_dir: Path | None = None) -> None:
        self.height, self.width, self.dtype = output_geometry(input_shape, dtype)
        from edge.gpu import cuda

        self._cuda = cuda
        self.fill = float(fill)
        self.zero_copy = zero_copy
        self._cubin = functools.partial(nvrtc.cubin, KERNEL_SOURCE, CUBIN_NAME, cache_dir=cache_dir)
        self._kernels: dict[str, Any] = {}      # cuda.Kernel per pixel format, loaded at its first frame
        bgr = self._kernel("bgr")
        try:
            self._done: Any = cuda.Event()
        except BaseException:
            bgr.free()
            raise
        self._host: Any = None          # cuda.HostBuffer (mapped with zero_copy), grown to the largest frame
        self._device: Any = None        # cuda.DeviceBuffer of the uploaded frame (copy mode)
        self._grid = (math.ceil(self.width / BLOCK[0]), math.ceil(self.height / BLOCK[1]))
        self._geometries: dict[tuple[int, int, int], tuple[Letterbox, tuple[Any, ...]]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the one image written: a batch-N slot passes `pointer + i * nbytes` for image i."""
        return 3 * self.height * self.width * self.dtype.itemsize

    def frame_buffer(self, width: int, height: int) -> np.ndarray:
        """A pinned HxWx3 uint8 array to decode the next frame into; `run` on it skips the host copy.
        It is valid until the next `frame_buffer`, `run` of another frame, or `free`."""
        self._done.wait(None)
        return self._staging(height * width * 3)[:height * width * 3].reshape(height, width, 3)

    def run(self, frame: np.ndarray, out_pointer: int, stream: Stream) -> Letterbox:
        """Enqueue upload + kernel on `stream`, writing [3,H,W] at device address `out_pointer`."""
        return self.run_staged(self.stage(frame), out_pointer, stream)

    def run_staged(self, staged: np.ndarray, out_pointer: int, stream: Stream) -> Letterbox:
        """`run` of a frame `stage` returned (and so checked): a caller that stages all its frames before it
        enqueues any."""
        box = self.enqueue(staged, out_pointer, stream)
        self._done.record(stream)
        return box

    def stage(self, frame: np.ndarray) -> np.ndarray:
        """The frame in this letterbox's pinned buffer: as it is when it was decoded there (`frame_buffer`),
        else copied in, once the last kernel that `run` enqueued has read the buffer."""
        check_frame(frame)
        return self._stage(frame)

    def enqueue(self, staged: np.ndarray, out_pointer: int, stream: Stream) -> Letterbox:
        """Enqueue upload + kernel of a frame `stage` returned, and record nothing: the caller keeps the pinned
        buffer unchanged until the work ran (a TensorRT slot's frame record in a CUDA graph does)."""
        height, width = staged.shape[:2]
        return self._launch(self._kernels["bgr"], self._upload(staged, stream), width, height, width * 3, out_pointer,
                            stream)

    def launch(self, source_pointer: int, width: int, height: int, out_pointer: int, stream: Stream, *,
               pitch: int | None = None) -> Letterbox:
        """`launch_planes` of a BGR uint8 frame at one device address, rows `pitch` bytes apart (default
        width * 3)."""
        return self.launch_planes((source_pointer,), width * 3 if pitch is None else pitch, width, height,
                                  out_pointer, stream)

    def launch_planes(self, planes: Sequence[int], pitch: int, width: int, height: int, out_pointer: int,
                      stream: Stream, *, pixel_format: str = "bgr", matrix: str = "bt601",
                      full_range: bool = False) -> Letterbox:
        """Enqueue the kernel alone on a frame already at device addresses (a decoder's surface, or a mapped
        host buffer's device pointer), and record this instance's event after it; the caller made `stream`
        wait for the frame first. `planes`: (pixels,) of bgr (3 bytes a pixel), bgrx or rgba (4); (luma,
        chroma) of nv12, chroma U,V interleaved at half height; rows `pitch` bytes apart in every plane.
        `matrix` (bt601, bt709) and `full_range` (False: Y 16-235, U,V 16-240) apply to nv12. FrameError, and
        nothing enqueued, for a frame it cannot read. The first frame of a format loads its kernel (so run one
        before capturing a CUDA graph of it)."""
        planes = tuple(int(p) for p in planes)
        check_planes(planes, pitch, width, height, pixel_format, matrix, full_range)
        kernel = self._kernel(pixel_format)
        colour = (planes[1], *yuv_coefficients(matrix, bool(full_range))) if pixel_format == "nv12" else ()
        box = self._launch(kernel, planes[0], width, height, pitch, out_pointer, stream, *colour)
        self._done.record(stream)
        return box

    def _kernel(self, pixel_format: str) -> Any:
        if pixel_format not in self._kernels:
            self._kernels[pixel_format] = self._cuda.Kernel(FUNCTIONS[pixel_format, self.dtype],
                                                            SIGNATURES[pixel_format], self._cubin)
        return self._kernels[pixel_format]

    def _launch(self, kernel: Any, source_pointer: int, width: int, height: int, pitch: int, out_pointer: int,
                stream: Stream, *colour: int) -> Letterbox:
        box, arguments = self._geometry(width, height, pitch)
        kernel.launch(self._grid, BLOCK, stream, source_pointer, int(out_pointer), *arguments, *colour)
        return box

    def _geometry(self, width: int, height: int, pitch: int) -> tuple[Letterbox, tuple[Any, ...]]:
        """The letterbox and the kernel's arguments after the two pointers, for one frame geometry (kept:
        a camera's frames keep their size)."""
        key = (width, height, pitch)
        if self._geometries.get(key) is None:
            box = Letterbox.fit(width, height, self.width, self.height)
            step_x, step_y = box.resize_steps()
            self._geometries = {key: (box, (step_x, step_y, width, height, pitch, self.width, self.height, box.left,
                                            box.top, box.width, box.height, INV255, np.float32(self.fill)))}
        return self._geometries[key]

    def free(self) -> None:
        """Release the buffers, the event and the kernels now, while the context is current; once."""
        for owned in (self._host, self._device, self._done, *self._kernels.values()):
            if owned is not None:
                owned.free()
        self._host = self._device = self._done = None
        self._kernels = {}

    def _staging(self, nbytes: int) -> np.ndarray:
        if self._host is None or self._host.array.nbytes < nbytes:
            if self._host is not None:
                self._host.free()
            self._host = self._cuda.HostBuffer((nbytes,), np.uint8, mapped=self.zero_copy)
        return self._host.array

    def _stage(self, frame: np.ndarray) -> np.ndarray:
        """The frame in pinned memory: in place when it is our buffer, else copied in (after our last kernel)."""
        if self._host is not None and frame.ctypes.data == self._host.array.ctypes.data \
                and frame.flags.c_contiguous:
            return frame
        self._done.wait(None)
        staged = self._staging(frame.size)[:frame.size].reshape(frame.shape)
        np.copyto(staged, frame)
        return staged

    def _upload(self, staged: np.ndarray, stream: Stream) -> int:
        """Device address of the staged frame: mapped memory as is, else copied to the device."""
        if self.zero_copy:
            return self._host.device_pointer()
        if self._device is None:
            self._device = self._cuda.DeviceBuffer(staged.nbytes)
        self._device.ensure(staged.nbytes).upload(staged, stream)
        return self._device.pointer
