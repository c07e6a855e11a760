"""The letterbox kernels' CUDA source (edge/gpu/kernels.py) compiled for this CPU with g++, for tests without a GPU.

The source is compiled as it is, behind a header that gives CUDA's names their IEEE meaning: __fmul_rn and the
other _rn intrinsics one float or double operation (-ffp-contract=off: no fused multiply-add), __float2int_rn
rounding to nearest even, cvt.rn.f16.f32 a conversion to _Float16. A launch runs each block's threads one after
another, twice: in the first pass every thread leaves at __syncthreads (a longjmp), once it filled its share of
the block's __shared__ tables (statics here, kept between the passes); the second runs them through.
`HostKernel` stands in for edge.gpu.cuda.Kernel on top of tests/support/fake_cuda.py, whose device memory is
numpy, so GpuLetterbox's launches compute into the stand-in's buffers. What it cannot show: timing, races,
memory a GPU cannot reach.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.gpu.kernels import BLOCK, FUNCTIONS, KERNEL_SOURCE, SIGNATURES
from tests.support import fake_cuda

HEADER = r"""
#include <algorithm>
#include <csetjmp>
#include <cmath>
#include <cstddef>
#include <cstring>
using std::max;
using std::min;
struct dim3 { int x, y, z; };
static dim3 blockIdx, threadIdx;
static int pass;
static std::jmp_buf barrier;
static inline void __syncthreads() { if (pass == 0) std::longjmp(barrier, 1); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
static inline unsigned short f16_bits(float v)
{
    _Float16 h = (_Float16)v;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

"""
CALL = r"""
template <typename K, typename... A>
static void launch(K kernel, int grid_x, int grid_y, A... args)
{
    for (int by = 0; by < grid_y; by++)
        for (int bx = 0; bx < grid_x; bx++) {
            blockIdx = dim3{bx, by, 0};
            for (pass = 0; pass < 2; pass++)
                for (int ty = 0; ty < BY; ty++)
                    for (int tx = 0; tx < BX; tx++) {
                        threadIdx = dim3{tx, ty, 0};
                        if (setjmp(barrier) == 0)
                            kernel(args...);
                    }
        }
}

// each argument cast to the kernel's own parameter type (a pointer from its integer address)
template <typename... P, typename... A>
static void call(void (*kernel)(P...), int grid_x, int grid_y, A... args)
{
    launch(kernel, grid_x, grid_y, (P)args...);
}
"""
PTX_F16 = 'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));'
C_TYPES = {"P": "unsigned long", "d": "double", "i": "int", "f": "float"}
CTYPES = {"P": ctypes.c_void_p, "d": ctypes.c_double, "i": ctypes.c_int, "f": ctypes.c_float}


def _wrapper(function: str, signature: str) -> str:
    """extern "C" host_<function>(grid_x, grid_y, arguments as pycuda passes them): the kernel over the grid."""
    params = ", ".join(f"{C_TYPES[kind]} a{i}" for i, kind in enumerate(signature))
    args = ", ".join(f"a{i}" for i in range(len(signature)))
    return f'extern "C" void host_{function}(int gx, int gy, {params}) {{ call({function}, gx, gy, {args}); }}\n'


def source() -> str:
    """The kernels' source behind HEADER, its fp16 store through _Float16, and a host_ entry point per kernel."""
    if PTX_F16 not in KERNEL_SOURCE:
        raise AssertionError("the fp16 store of edge/gpu/kernels.py changed: update tests/support/host_kernels.py")
    body = KERNEL_SOURCE.replace(PTX_F16, "h = f16_bits(v);")
    wrappers = "".join(_wrapper(function, SIGNATURES[name]) for (name, _), function in FUNCTIONS.items())
    return HEADER + body + CALL + wrappers


def build(directory: Path) -> ctypes.CDLL:
    """Compile the kernels into directory/host_kernels.so; pytest.skip where there is no g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("the host build of the letterbox kernels needs g++ (apt install g++)")
    path = directory / "host_kernels.cpp"
    path.write_text(source())
    library = directory / "host_kernels.so"
    built = subprocess.run([compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-o",
                            str(library), str(path)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        raise AssertionError(f"g++ could not build {path}:\n{built.stderr[-4000:]}")
    return ctypes.CDLL(str(library))


class HostKernel(fake_cuda.Kernel):
    """fake_cuda's Kernel (ledger, trace) that also runs the kernel on this CPU when it is launched."""

    library: ctypes.CDLL

    def __init__(self, function: str, signature: str, cubin: Any) -> None:
        super().__init__(function, signature, cubin)
        self._run = getattr(self.library, f"host_{function}")
        self._run.argtypes = [ctypes.c_int, ctypes.c_int, *(CTYPES[kind] for kind in signature)]
        self._run.restype = None

    def launch(self, grid: tuple[int, int], block: tuple[int, int, int], stream: Any, *args: Any) -> None:
        if tuple(block) != BLOCK:
            raise AssertionError(f"launched with block {block}: the kernels' source is written for {BLOCK}")
        super().launch(grid, block, stream, *args)
        self._run(grid[0], grid[1], *args)


def install(monkeypatch: pytest.MonkeyPatch, library: ctypes.CDLL) -> fake_cuda.Ledger:
    """fake_cuda in place, with kernels that compute (see the module doc)."""
    ledger = fake_cuda.install(monkeypatch)
    monkeypatch.setattr(HostKernel, "library", library, raising=False)
    monkeypatch.setattr("edge.gpu.cuda.Kernel", HostKernel)
    return ledger
