"""GPU preprocessing: one CUDA kernel letterboxes a uint8 BGR frame straight into an engine's input.

`GpuLetterbox` stages the frame in pinned memory and uploads it on the caller's stream (with `zero_copy` the
kernel reads the mapped buffer in place), then letterbox + resize + BGR->RGB + x/255 + HWC->CHW go into the
engine's device buffer in fp32 or fp16. It returns the same `Letterbox` as the CPU path (edge/letterbox.py),
and the same values: bit-identical in fp32, the CPU's fp32 cast to fp16 in fp16 (MAX_ABS_DIFF). One instance
holds one frame; the kernel is compiled at first use (edge/gpu/nvrtc.py). The arithmetic, how a slot uses it
and where it was checked: docs/gpu.md section 3; what it costs: section 5.
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
from edge.letterbox import INV255, FrameError, Letterbox, check_frame

if TYPE_CHECKING:
    from edge.gpu.cuda import Stream

BLOCK = (32, 8, 1)
SIGNATURE = "PPddiiiiiiiiiff"   # src, dst, step_x, step_y, src w/h/pitch, dst w/h, left, top, box w/h, norm, fill
FUNCTIONS = {np.dtype(np.float32): "letterbox_f32", np.dtype(np.float16): "letterbox_f16"}
# max |GPU - CPU| against OpenCV's vectorised resize, per output dtype (docs/gpu.md section 3 says why)
MAX_ABS_DIFF = {np.dtype(np.float32): 0.0, np.dtype(np.float16): 2.0 ** -12}

KERNEL_SOURCE = r"""
#define BX 32
#define BY 8
#define COEF_SCALE 2048.f

struct Taps { int i0, i1, w0, w1; };

// (float)((d + 0.5) * step - 0.5) in double, rounded per operation (no FMA), as OpenCV computes it
__device__ __forceinline__ float source_coord(int d, double step)
{
    return (float)__dadd_rn(__dmul_rn((double)d + 0.5, step), -0.5);
}

__device__ __forceinline__ Taps taps(int i, float f, int n)
{
    Taps t;
    t.i0 = min(max(i, 0), n - 1);
    t.i1 = min(max(i + 1, 0), n - 1);
    t.w0 = __float2int_rn(__fmul_rn(__fsub_rn(1.f, f), COEF_SCALE));
    t.w1 = __float2int_rn(__fmul_rn(f, COEF_SCALE));
    return t;
}

// columns: outside the image OpenCV takes the border column alone (weight 0 for the other)
__device__ Taps column_taps(int d, double step, int n)
{
    float f = source_coord(d, step);
    int i = (int)floorf(f);
    f = __fsub_rn(f, (float)i);
    if (i < 0) { i = 0; f = 0.f; }
    if (i >= n - 1) { i = n - 1; f = 0.f; }
    return taps(i, f, n);
}

// rows: OpenCV keeps the weights and repeats the border row
__device__ Taps row_taps(int d, double step, int n)
{
    float f = source_coord(d, step);
    int i = (int)floorf(f);
    return taps(i, __fsub_rn(f, (float)i), n);
}

__device__ __forceinline__ int level(const unsigned char* r0, const unsigned char* r1, Taps x, Taps y, int c)
{
    int s0 = r0[x.i0 * 3 + c] * x.w0 + r0[x.i1 * 3 + c] * x.w1;
    int s1 = r1[x.i0 * 3 + c] * x.w0 + r1[x.i1 * 3 + c] * x.w1;
    int v = (((s0 >> 4) * y.w0) >> 16) + (((s1 >> 4) * y.w1) >> 16);
    return min(max((v + 2) >> 2, 0), 255);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }

__device__ __forceinline__ void store(unsigned short* p, float v)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

template <typename T>
__device__ void letterbox(const unsigned char* __restrict__ src, T* __restrict__ dst, double step_x, double step_y,
                          int src_w, int src_h, int src_pitch, int dst_w, int dst_h, int left, int top,
                          int box_w, int box_h, float norm, float fill)
{
    __shared__ Taps xs[BX];
    __shared__ Taps ys[BY];
    int x = blockIdx.x * BX + threadIdx.x, y = blockIdx.y * BY + threadIdx.y;
    int bx = x - left, by = y - top;
    if (threadIdx.y == 0 && bx >= 0 && bx < box_w)
        xs[threadIdx.x] = column_taps(bx, step_x, src_w);
    if (threadIdx.y == 1 && threadIdx.x < BY) {
        int row = blockIdx.y * BY + threadIdx.x - top;
        if (row >= 0 && row < box_h)
            ys[threadIdx.x] = row_taps(row, step_y, src_h);
    }
    __syncthreads();
    if (x >= dst_w || y >= dst_h)
        return;
    size_t plane = (size_t)dst_w * dst_h;
    T* out = dst + (size_t)y * dst_w + x;
    if (bx < 0 || bx >= box_w || by < 0 || by >= box_h) {
        store(out, fill);
        store(out + plane, fill);
        store(out + 2 * plane, fill);
        return;
    }
    Taps tx = xs[threadIdx.x], ty = ys[threadIdx.y];
    const unsigned char* r0 = src + (size_t)ty.i0 * src_pitch;
    const unsigned char* r1 = src + (size_t)ty.i1 * src_pitch;
    store(out, __fmul_rn((float)level(r0, r1, tx, ty, 2), norm));               // R (BGR in)
    store(out + plane, __fmul_rn((float)level(r0, r1, tx, ty, 1), norm));       // G
    store(out + 2 * plane, __fmul_rn((float)level(r0, r1, tx, ty, 0), norm));   // B
}

#define KERNEL(name, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(BX * BY) name(                                       \
        const unsigned char* src, T* dst, double step_x, double step_y, int src_w, int src_h,          \
        int src_pitch, int dst_w, int dst_h, int left, int top, int box_w, int box_h, float norm,      \
        float fill)                                                                                    \
    {                                                                                                  \
        letterbox<T>(src, dst, step_x, step_y, src_w, src_h, src_pitch, dst_w, dst_h, left, top,       \
                     box_w, box_h, norm, fill);                                                        \
    }

KERNEL(letterbox_f32, float)
KERNEL(letterbox_f16, unsigned short)
"""


def output_geometry(input_shape: Sequence[int], dtype: Any) -> tuple[int, int, np.dtype]:
    """(height, width, dtype) of an engine input [N,3,H,W] in fp32 or fp16; EngineError otherwise."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or shape[0] < 1 or shape[1] != 3 or min(shape[2:]) < 1:
        raise EngineError("GPU preprocessing needs an engine input of shape [N,3,H,W]", note=f"got {shape}",
                          hint="use the CPU preprocessing (edge.letterbox) for other input layouts")
    kind = np.dtype(dtype)
    if kind not in FUNCTIONS:
        raise EngineError("GPU preprocessing writes fp32 or fp16 engine inputs", note=f"got {kind}",
                          hint="build the engine with a float32 or float16 input (keep IO types when converting)")
    return shape[2], shape[3], kind


class GpuLetterbox:
    """Letterbox a BGR uint8 frame into one [3,H,W] image of an engine input on a CUDA stream.

    Create, run and free it with the primary context current (edge.gpu.cuda.Context.current())."""

    def __init__(self, input_shape: Sequence[int], dtype: Any, *, fill: float = 0.5, zero_copy: bool = False,
                 cache_dir: Path | None = None) -> None:
        self.height, self.width, self.dtype = output_geometry(input_shape, dtype)
        from edge.gpu import cuda

        self._cuda = cuda
        self.fill = float(fill)
        self.zero_copy = zero_copy
        function = FUNCTIONS[self.dtype]
        compiled = functools.partial(nvrtc.cubin, KERNEL_SOURCE, function, cache_dir=cache_dir)
        self._kernel: Any = cuda.Kernel(function, SIGNATURE, compiled)
        try:
            self._done: Any = cuda.Event()
        except BaseException:
            self._kernel.free()
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
        return self._launch(self._upload(staged, stream), width, height, width * 3, out_pointer, stream)

    def launch(self, source_pointer: int, width: int, height: int, out_pointer: int, stream: Stream, *,
               pitch: int | None = None) -> Letterbox:
        """Enqueue the kernel alone on a BGR uint8 frame already at a device address (rows `pitch` bytes
        apart, default width * 3): a frame decoded or uploaded by someone else."""
        pitch = width * 3 if pitch is None else pitch
        if width < 1 or height < 1 or pitch < width * 3:
            raise FrameError("expected a non-empty BGR uint8 frame", note=f"width {width}, height {height},"
                             f" pitch {pitch} bytes", hint="a row holds width * 3 bytes at least")
        box = self._launch(int(source_pointer), width, height, pitch, out_pointer, stream)
        self._done.record(stream)
        return box

    def _launch(self, source_pointer: int, width: int, height: int, pitch: int, out_pointer: int,
                stream: Stream) -> Letterbox:
        box, arguments = self._geometry(width, height, pitch)
        self._kernel.launch(self._grid, BLOCK, stream, source_pointer, int(out_pointer), *arguments)
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
        """Release the buffers, the event and the kernel now, while the context is current; once."""
        for owned in (self._host, self._device, self._done, self._kernel):
            if owned is not None:
                owned.free()
        self._host = self._device = self._done = self._kernel = None

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
