"""The letterbox kernels' CUDA source, and the facts it is made from: pixel formats, colour matrices, coefficients.

One source holds a kernel per pixel format (bgr, bgrx, rgba, nv12) and output dtype (fp32, fp16): colour
conversion, letterbox, OpenCV's fixed-point INTER_LINEAR resize, x/255 and CHW in one pass. NV12 is converted
to RGB per tap in OpenCV's fixed point (its nearest chroma: each 2x2 block of luma shares one U,V pair), then
resized, so the output is the CPU path's cvtColor + letterbox. edge/gpu/letterbox.py launches them and holds
their numpy twin (`to_bgr`); docs/gpu.md section 3 gives the arithmetic and the accuracy.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

BLOCK = (32, 8, 1)
CUBIN_NAME = "letterbox"                # one source, so one compile and one cached cubin for every kernel
YUV_SHIFT = 20                          # YUV -> RGB coefficients are integers in units of 2**-20, as OpenCV's


@dataclasses.dataclass(frozen=True)
class PixelFormat:
    """How a frame of a pixel format lies in memory."""

    planes: int                         # 1; nv12: luma, then interleaved U,V at half width and height
    bytes_per_pixel: int                # in the first plane
    rgb: tuple[int, int, int] | None    # the byte of red, green and blue in a pixel; None for YUV


PIXEL_FORMATS = {
    "bgr": PixelFormat(1, 3, (2, 1, 0)),
    "bgrx": PixelFormat(1, 4, (2, 1, 0)),
    "rgba": PixelFormat(1, 4, (0, 1, 2)),
    "nv12": PixelFormat(2, 1, None),
}


class Matrix(NamedTuple):
    """The luma weights of red and blue, Kr and Kb (Kg = 1 - Kr - Kb)."""

    kr: float
    kb: float


# ITU-R BT.601-7 (section 2.5.1) and ITU-R BT.709-6 (item 3.2): E'Y = Kr E'R + Kg E'G + Kb E'B
MATRICES = {"bt601": Matrix(0.299, 0.114), "bt709": Matrix(0.2126, 0.0722)}


class YuvCoefficients(NamedTuple):
    """8-bit YUV -> RGB in fixed point: c = (max(Y - y_offset, 0) * cy + 2**19 + cu * (U - 128) + cv * (V - 128))
    >> 20 per channel, clamped to 0..255 (OpenCV's color_yuv.simd.hpp, ITUR_BT_601_*)."""

    cy: int
    cvr: int
    cug: int
    cvg: int
    cub: int
    y_offset: int


# OpenCV's cvtColor(COLOR_YUV2BGR_NV12) constants (imgproc/src/color_yuv.simd.hpp): BT.601 limited range, the
# coefficients 1.164, 1.596, -0.391, -0.813, 2.018 (within 0.001 of the standard's) times 2**20
OPENCV_BT601_LIMITED = YuvCoefficients(1220542, 1673527, -409993, -852492, 2116026, 16)


@functools.cache
def yuv_coefficients(matrix: str, full_range: bool) -> YuvCoefficients:
    """The fixed-point coefficients of a matrix and range: OpenCV's for BT.601 limited (so the kernel equals
    cvtColor + the CPU letterbox), else the standard's equations rounded to 2**-20. Limited range: Y 16-235 and
    U, V 16-240 (scales 255/219 and 255/224); full range: 0-255, chroma centred on 128 (H.264 Annex E,
    video_full_range_flag 1). KeyError for a matrix not in MATRICES."""
    kr, kb = MATRICES[matrix]
    if matrix == "bt601" and not full_range:
        return OPENCV_BT601_LIMITED
    kg = 1.0 - kr - kb
    y_scale, c_scale, y_offset = (1.0, 1.0, 0) if full_range else (255 / 219, 255 / 224, 16)
    cr, cb = c_scale * 2 * (1 - kr), c_scale * 2 * (1 - kb)      # R = Y + cr V, B = Y + cb U
    ug, vg = -cb * kb / kg, -cr * kr / kg                            # G = (Y - Kr R - Kb B) / Kg
    return YuvCoefficients(*(round(c * (1 << YUV_SHIFT)) for c in (y_scale, cr, ug, vg, cb)), y_offset)


DTYPES = {np.dtype(np.float32): ("f32", "float"), np.dtype(np.float16): ("f16", "unsigned short")}
FUNCTIONS = {(name, dtype): f"letterbox_{name}_{suffix}" for name in PIXEL_FORMATS
             for dtype, (suffix, _) in DTYPES.items()}
# pycuda's prepared-call formats: src, dst, step_x, step_y, src w/h/pitch, dst w/h, left, top, box w/h, norm, fill;
# nv12 then: chroma, the YuvCoefficients
SIGNATURES = {name: "PPddiiiiiiiiiff" + ("P" + "i" * len(YuvCoefficients._fields) if name == "nv12" else "")
              for name in PIXEL_FORMATS}

_BODY = r"""
#define BX 32
#define BY 8
#define COEF_SCALE 2048.f

struct Taps { int i0, i1, w0, w1; };
struct Rgb { int r, g, b; };

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

// one channel of the four taps (a0 a1 on row y.i0, b0 b1 on row y.i1), as OpenCV's vectorised INTER_LINEAR
__device__ __forceinline__ int blend(int a0, int a1, int b0, int b1, Taps x, Taps y)
{
    int s0 = a0 * x.w0 + a1 * x.w1;
    int s1 = b0 * x.w0 + b1 * x.w1;
    int v = (((s0 >> 4) * y.w0) >> 16) + (((s1 >> 4) * y.w1) >> 16);
    return min(max((v + 2) >> 2, 0), 255);
}

__device__ __forceinline__ int clamp8(int v) { return min(max(v, 0), 255); }

// a packed frame: STRIDE bytes a pixel, red, green and blue at bytes R, G, B of it
template <int STRIDE, int R, int G, int B>
struct Packed {
    const unsigned char* __restrict__ pixels;
    int pitch;

    __device__ __forceinline__ Rgb at(int x, int y) const
    {
        const unsigned char* p = pixels + (size_t)y * pitch + x * STRIDE;
        return Rgb{p[R], p[G], p[B]};
    }
};

struct YuvCoefficients { int cy, cvr, cug, cvg, cub, y_offset; };

// NV12: the luma plane, then U,V interleaved at half width and height, rows `pitch` bytes apart in both. Each
// 2x2 block of luma takes its block's U,V (OpenCV's nearest chroma); RGB in fixed point as OpenCV's cvtColor
struct Nv12 {
    const unsigned char* __restrict__ luma;
    const unsigned char* __restrict__ chroma;
    int pitch;
    YuvCoefficients k;

    __device__ __forceinline__ Rgb at(int x, int y) const
    {
        int l = max((int)luma[(size_t)y * pitch + x] - k.y_offset, 0) * k.cy + (1 << (YUV_SHIFT - 1));
        const unsigned char* uv = chroma + (size_t)(y >> 1) * pitch + (x & ~1);
        int u = (int)uv[0] - 128, v = (int)uv[1] - 128;
        return Rgb{clamp8((l + k.cvr * v) >> YUV_SHIFT), clamp8((l + k.cug * u + k.cvg * v) >> YUV_SHIFT),
                   clamp8((l + k.cub * u) >> YUV_SHIFT)};
    }
};

__device__ __forceinline__ void store(float* p, float v) { *p = v; }

__device__ __forceinline__ void store(unsigned short* p, float v)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

template <typename T, typename Source>
__device__ void letterbox(const Source src, T* __restrict__ dst, double step_x, double step_y, int src_w, int src_h,
                          int dst_w, int dst_h, int left, int top, int box_w, int box_h, float norm, float fill)
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
    Rgb a0 = src.at(tx.i0, ty.i0), a1 = src.at(tx.i1, ty.i0);
    Rgb b0 = src.at(tx.i0, ty.i1), b1 = src.at(tx.i1, ty.i1);
    store(out, __fmul_rn((float)blend(a0.r, a1.r, b0.r, b1.r, tx, ty), norm));
    store(out + plane, __fmul_rn((float)blend(a0.g, a1.g, b0.g, b1.g, tx, ty), norm));
    store(out + 2 * plane, __fmul_rn((float)blend(a0.b, a1.b, b0.b, b1.b, tx, ty), norm));
}

#define ARGS(T) T* dst, double step_x, double step_y, int src_w, int src_h, int src_pitch, int dst_w, int dst_h, \
                int left, int top, int box_w, int box_h, float norm, float fill
#define PASS dst, step_x, step_y, src_w, src_h, dst_w, dst_h, left, top, box_w, box_h, norm, fill

#define PACKED(name, T, STRIDE, R, G, B)                                                                  \
    extern "C" __global__ void __launch_bounds__(BX * BY) name(const unsigned char* src, ARGS(T))       \
    {                                                                                                    \
        letterbox<T>(Packed<STRIDE, R, G, B>{src, src_pitch}, PASS);                                     \
    }

#define NV12(name, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(BX * BY) name(const unsigned char* luma, ARGS(T),      \
        const unsigned char* chroma, int cy, int cvr, int cug, int cvg, int cub, int y_offset)          \
    {                                                                                                    \
        YuvCoefficients k = {cy, cvr, cug, cvg, cub, y_offset};                                         \
        letterbox<T>(Nv12{luma, chroma, src_pitch, k}, PASS);                                            \
    }
"""


def _instances() -> str:
    lines = []
    for (name, dtype), function in FUNCTIONS.items():
        c_type = DTYPES[dtype][1]
        layout = PIXEL_FORMATS[name]
        if layout.rgb is None:
            lines.append(f"NV12({function}, {c_type})")
        else:
            lines.append(f"PACKED({function}, {c_type}, {layout.bytes_per_pixel}, {', '.join(map(str, layout.rgb))})")
    return "\n".join(lines) + "\n"


KERNEL_SOURCE = f"#define YUV_SHIFT {YUV_SHIFT}\n{_BODY}\n{_instances()}"
