"""NVRTC compiles every letterbox kernel (edge/gpu/kernels.py) for a Jetson Orin and for the test GPU, without a GPU.

It compiles the way a GpuLetterbox does (edge.gpu.nvrtc.cubin, its options and cache, for the SM a device would
name). libnvrtc comes from where edge looks for it; on a machine without the CUDA toolkit, from the
nvidia-cuda-nvrtc wheel of the dev extra (setup.py), through CUDA_HOME. Skipped, with the reason, where neither is.
"""
from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import EngineError
from edge.gpu import nvrtc
from edge.gpu.kernels import CUBIN_NAME, FUNCTIONS, KERNEL_SOURCE


def wheel_library() -> Path | None:
    """The directory of the nvidia-cuda-nvrtc wheel's libnvrtc (nvidia/cu13/lib; CUDA 12's wheel: cuda_nvrtc/lib)."""
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in spec.submodule_search_locations or []] if spec else []
    found = sorted(path.parent for root in roots for path in root.glob("*/lib/libnvrtc.so.1[0-9]"))
    return found[-1] if found else None


@pytest.fixture
def nvrtc_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """NVRTC loaded as edge loads it, the wheel's where there is no other; its version."""
    lib = wheel_library()
    if lib is not None:
        for builtins in lib.glob("libnvrtc-builtins.so.*"):        # NVRTC dlopens it by name: already loaded then
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        monkeypatch.setenv("CUDA_HOME", str(lib.parent))
    nvrtc.library.cache_clear()
    try:
        version = nvrtc.version()
    except EngineError as exc:
        pytest.skip(f"no NVRTC: {exc.what}; the nvidia-cuda-nvrtc wheel of the dev extra provides one"
                    " (scripts/setup.sh --dev)")
    yield version
    nvrtc.library.cache_clear()


@pytest.mark.parametrize("arch", ["sm_87", "sm_90", "sm_110"], ids=["jetson-orin", "h100", "jetson-thor"])
def test_every_kernel_compiles(nvrtc_library: str, arch: str, tmp_path: Path) -> None:
    if arch == "sm_110" and int(nvrtc_library.split(".")[0]) < 13:
        pytest.skip(f"NVRTC {nvrtc_library} predates sm_110 (CUDA 13)")
    binary = nvrtc.cubin(KERNEL_SOURCE, CUBIN_NAME, arch=arch, cache_dir=tmp_path)
    assert binary.startswith(b"\x7fELF") and len(binary) <= nvrtc.MAX_CUBIN_BYTES
    assert [f for f in FUNCTIONS.values() if f.encode() + b"\0" not in binary] == []
    cached = f"{CUBIN_NAME}-{nvrtc.cache_key(KERNEL_SOURCE, [], arch)[:24]}.cubin"     # one cubin for them all
    assert [p.name for p in tmp_path.iterdir()] == [cached]
