"""GPU preprocessing (edge/gpu/letterbox.py) against the CPU letterbox (edge/letterbox.py).

CPU tier: the frame and shape checks, the kernel cache (edge/gpu/nvrtc.py), the lazy import, the
fixed-point arithmetic the kernel copies from OpenCV, checked in numpy against this machine's cv2, and the
kernel compiled for this CPU (tests/support/host_kernels.py: the `device` fixture's host half) on the
demo's stills and on synthetic odd sizes. GPU tier (marked gpu): the same on the GPU, and the rest of
GpuLetterbox (staging, streams, pitched frames, the cache), fp32 and fp16, against the documented bound
(letterbox.MAX_ABS_DIFF: 0 for fp32, 2**-12 for fp16).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.errors import EngineError
from edge.gpu import nvrtc
from edge.gpu.kernels import CUBIN_NAME
from edge.gpu.letterbox import MAX_ABS_DIFF, GpuLetterbox, output_geometry
from edge.letterbox import FrameError, Letterbox, check_frame, letterbox_into

NET = (1, 3, 416, 416)
BAD_FRAMES = {
    "float": np.zeros((8, 8, 3), np.float32),
    "grey": np.zeros((8, 8), np.uint8),
    "bgra": np.zeros((8, 8, 4), np.uint8),
    "empty": np.zeros((0, 0, 3), np.uint8),
    "none": None,
}
# (width, height): 1080p, the demo video, odd, tiny, portrait, a tall strip, exact 2x (OpenCV takes
# INTER_AREA there), upscales, 4K
SIZES = [(1920, 1080), (1280, 720), (768, 576), (641, 479), (1, 1), (3, 2), (7, 5), (480, 640), (100, 3000), (832, 832),
         (200, 100), (415, 300), (3840, 2160)]


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Independent random pixels: the hardest case for an interpolation to match."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- CPU tier ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frame_is_a_three_part_error(name: str) -> None:
    with pytest.raises(FrameError, match="BGR uint8") as caught:
        check_frame(BAD_FRAMES[name])
    assert caught.value.note and caught.value.hint
    assert isinstance(caught.value, ValueError)                 # what letterbox_into raised before


def test_cpu_letterbox_takes_the_same_check() -> None:
    with pytest.raises(FrameError, match="Note: got uint8 \\(0, 0, 3\\)"):
        letterbox_into(BAD_FRAMES["empty"], np.zeros(NET, np.float32))


@pytest.mark.parametrize("shape,dtype,problem", [
    ((3, 416, 416), np.float32, "shape"), ((1, 4, 416, 416), np.float32, "shape"),
    ((1, 3, 0, 416), np.float32, "shape"), (NET, np.float64, "fp32 or fp16"), (NET, np.uint8, "fp32 or fp16")])
def test_engine_input_must_be_nchw_fp32_or_fp16(shape: tuple[int, ...], dtype: Any, problem: str) -> None:
    with pytest.raises(EngineError, match=problem):
        output_geometry(shape, dtype)
    with pytest.raises(EngineError, match=problem):            # before anything asks for CUDA
        GpuLetterbox(shape, dtype)


def test_engine_input_geometry() -> None:
    assert output_geometry((4, 3, 384, 640), np.float16) == (384, 640, np.dtype(np.float16))


def test_resize_steps_are_computed_as_opencv_does() -> None:
    box = Letterbox.fit(1280, 720, 416, 416)
    assert box.resize_steps() == (1.0 / (416 / 1280), 1.0 / (234 / 720))
    assert box.resize_steps()[0] != 1280 / 416                 # not the same double: OpenCV divides twice


def _coords(count: int, step: float, size: int, *, clamp_weight: bool) -> tuple[np.ndarray, ...]:
    """The kernel's source_coord/column_taps/row_taps in numpy."""
    f = ((np.arange(count) + 0.5) * step - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = f - i.astype(np.float32)
    if clamp_weight:
        outside = (i < 0) | (i >= size - 1)
        f[outside] = 0
        i = np.where(i < 0, 0, np.where(i >= size - 1, size - 1, i))
    w0, w1 = np.rint((1 - f) * 2048).astype(np.int64), np.rint(f * 2048).astype(np.int64)
    return np.clip(i, 0, size - 1), np.clip(i + 1, 0, size - 1), w0, w1


def _kernel_levels(image: np.ndarray, box: Letterbox) -> np.ndarray:
    """The kernel's level() in numpy: OpenCV's fixed-point INTER_LINEAR as its SIMD code computes it."""
    step_x, step_y = box.resize_steps()
    x0, x1, a0, a1 = _coords(box.width, step_x, box.src_width, clamp_weight=True)
    y0, y1, b0, b1 = _coords(box.height, step_y, box.src_height, clamp_weight=False)
    pixels = image.astype(np.int64)
    s0 = pixels[y0][:, x0] * a0[None, :, None] + pixels[y0][:, x1] * a1[None, :, None]
    s1 = pixels[y1][:, x0] * a0[None, :, None] + pixels[y1][:, x1] * a1[None, :, None]
    v = (((s0 >> 4) * b0[:, None, None]) >> 16) + (((s1 >> 4) * b1[:, None, None]) >> 16)
    return np.clip((v + 2) >> 2, 0, 255)


@pytest.mark.parametrize("width,height", SIZES)
def test_kernel_arithmetic_reproduces_this_opencv(width: int, height: int) -> None:
    """The bit-identity the kernel claims rests on OpenCV's arithmetic: an OpenCV upgrade that changed
    it fails here, on every machine, before the GPU tier sees it."""
    image = noise(width, height)
    for net_w, net_h in ((416, 416), (640, 384)):
        box = Letterbox.fit(width, height, net_w, net_h)
        want = cv2.resize(image, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(_kernel_levels(image, box), want)


def test_cpu_tier_never_imports_pycuda() -> None:
    code = "import sys; sys.modules['pycuda'] = None; import edge.gpu.letterbox, edge.gpu.nvrtc"   # None: import fails
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_kernel_cache_key_covers_source_options_and_sm() -> None:
    base = nvrtc.cache_key("src", ["-a"], "sm_87")
    assert len({base, nvrtc.cache_key("src2", ["-a"], "sm_87"), nvrtc.cache_key("src", ["-b"], "sm_87"),
                nvrtc.cache_key("src", ["-a"], "sm_110"), nvrtc.cache_key("src", [], "sm_87")}) == 5


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Stand in for NVRTC: records each compile's options and returns a fake cubin."""
    calls: list[list[str]] = []

    def compile_cubin(source: str, name: str, options: list[str]) -> bytes:
        calls.append(list(options))
        return b"\x7fELF" + source.encode()
    monkeypatch.setattr(nvrtc, "compile_cubin", compile_cubin)
    return calls


def test_kernel_is_compiled_once_then_read_from_the_cache(tmp_path: Path, compiles: list[list[str]]) -> None:
    first = nvrtc.cubin("src", "k", arch="sm_87", cache_dir=tmp_path)
    assert nvrtc.cubin("src", "k", arch="sm_87", cache_dir=tmp_path) == first
    assert compiles == [["--gpu-architecture=sm_87"]]
    nvrtc.cubin("src", "k", arch="sm_90", cache_dir=tmp_path)
    nvrtc.cubin("src", "k", arch="sm_87", cache_dir=tmp_path, refresh=True)
    assert len(compiles) == 3 and sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["k", "k"]


def planted(cache: Path, source: str = "src", name: str = "k", arch: str = "sm_87") -> Path:
    """Where nvrtc.cubin looks for the cubin of (source, name, arch): a name anyone can work out."""
    return cache / f"{name}-{nvrtc.cache_key(source, [], arch)[:24]}.cubin"


def test_the_kernel_cache_directory_is_made_this_users_alone(tmp_path: Path, compiles: list[list[str]]) -> None:
    """0700, where it was made 0777 less the umask: whoever can write there chooses the code run on the GPU."""
    cache = tmp_path / "edge" / "kernels"
    nvrtc.cubin("src", "k", arch="sm_87", cache_dir=cache)
    assert cache.stat().st_mode & 0o777 == 0o700 and planted(cache).read_bytes() == b"\x7fELFsrc"


@pytest.mark.parametrize("problem", ["mode 777", "mode 775", "a link", "another owner"])
def test_a_kernel_cache_another_user_could_change_is_not_used(tmp_path: Path, compiles: list[list[str]],
                                                               caplog: pytest.LogCaptureFixture,
                                                               problem: str) -> None:
    """A cubin planted there is neither read nor replaced: the kernel is compiled, with a warning that names the
    directory, its owner and mode, and the fix."""
    real = tmp_path / "kernels"
    real.mkdir(mode=0o700)
    planted(real).write_bytes(b"\x7fELF planted")
    cache = real
    if problem == "a link":
        cache = tmp_path / "link"
        cache.symlink_to(real)
    elif problem == "another owner":
        if os.geteuid() != 0:
            pytest.skip("giving the directory to another uid needs root (os.chown)")
        os.chown(real, 4242, 4242)
    else:
        real.chmod(int(problem.split()[1], 8))
    assert nvrtc.cubin("src", "k", arch="sm_87", cache_dir=cache) == b"\x7fELFsrc"
    assert len(compiles) == 1 and planted(real).read_bytes() == b"\x7fELF planted"
    note = "owner uid 4242, mode 700" if problem == "another owner" else \
        f"owner uid {os.geteuid()}, mode {777 if problem == 'a link' else problem.split()[1]}"
    assert f"kernel cache directory {cache} " in caplog.text and f"Note: {note}" in caplog.text
    assert "Hint: make it a plain directory of this user's alone" in caplog.text and "EDGE_CACHE" in caplog.text


@pytest.mark.parametrize("kind", ["a link", "too large", "a FIFO"])
def test_a_cached_kernel_that_is_not_a_small_regular_file_is_compiled_again(
        tmp_path: Path, compiles: list[list[str]], caplog: pytest.LogCaptureFixture, kind: str) -> None:
    """Read with edge.files.read_regular: no link is followed (it was, to a file of any size), no FIFO waited
    on, nothing over MAX_CUBIN_BYTES read; what is there is replaced by the compiled cubin."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"\x7fELF" + bytes(nvrtc.MAX_CUBIN_BYTES))
    cache = tmp_path / "kernels"
    cache.mkdir(mode=0o700)
    path = planted(cache)
    if kind == "a link":
        path.symlink_to(target)
    elif kind == "too large":
        target.rename(path)
    else:
        os.mkfifo(path)
    assert nvrtc.cubin("src", "k", arch="sm_87", cache_dir=cache) == b"\x7fELFsrc"
    assert len(compiles) == 1 and not path.is_symlink() and path.read_bytes() == b"\x7fELFsrc"
    assert f"cached kernel {path} " in caplog.text and "compiled again and replaced" in caplog.text


def test_unwritable_kernel_cache_still_compiles(tmp_path: Path, compiles: list[list[str]],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert nvrtc.cubin("src", "k", arch="sm_87", cache_dir=blocker / "kernels").startswith(b"\x7fELF")
    assert "not writable" in caplog.text and list(tmp_path.iterdir()) == [blocker]


def test_missing_nvrtc_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nvrtc, "_candidates", lambda: ["/nonexistent/libnvrtc.so.12"])
    nvrtc.library.cache_clear()
    try:
        with pytest.raises(EngineError, match="NVRTC") as caught:
            nvrtc.cubin("src", "k", arch="sm_87", cache_dir=tmp_path)
    finally:
        nvrtc.library.cache_clear()
    assert "/nonexistent/libnvrtc.so.12" in caught.value.note and "cuda-nvrtc" in caught.value.hint


# ---- GPU tier ----------------------------------------------------------------------------------------

def gpu_letterbox(gpu: Any, frame: np.ndarray, dtype: Any = np.float32, shape: tuple[int, ...] = NET,
                  *, zero_copy: bool = False) -> tuple[np.ndarray, Letterbox]:
    cuda, stream, cache = gpu
    pre = GpuLetterbox(shape, dtype, zero_copy=zero_copy, cache_dir=cache)
    out = cuda.DeviceBuffer(pre.nbytes)
    host = np.empty((1, *shape[1:]), dtype)
    try:
        box = pre.run(frame, out.pointer, stream)
        out.download(host, stream)
        stream.synchronize()
    finally:
        out.free()
        pre.free()
    return host, box


def cpu_letterbox(frame: np.ndarray, shape: tuple[int, ...] = NET) -> tuple[np.ndarray, Letterbox]:
    out = np.empty((1, *shape[1:]), np.float32)
    return out, letterbox_into(frame, out)


def assert_matches_cpu(got: np.ndarray, want: np.ndarray) -> None:
    """fp32: the CPU's values exactly; fp16: the CPU's values rounded to fp16, so within 2**-12."""
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    assert np.abs(got.astype(np.float32) - want).max() <= MAX_ABS_DIFF[got.dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_demo_stills_match_the_cpu_letterbox(device: Any, stills: dict[str, np.ndarray], dtype: Any) -> None:
    for name, image in stills.items():
        want, want_box = cpu_letterbox(image)
        got, box = gpu_letterbox(device, image, dtype)
        assert box == want_box, name
        assert_matches_cpu(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("width,height", SIZES)
def test_odd_sizes_match_the_cpu_letterbox(device: Any, width: int, height: int, dtype: Any) -> None:
    frame = noise(width, height)
    for shape in (NET, (1, 3, 384, 640)):
        want, want_box = cpu_letterbox(frame, shape)
        got, box = gpu_letterbox(device, frame, dtype, shape)
        assert box == want_box
        assert_matches_cpu(got, want)


def test_zero_copy_reads_the_mapped_frame_in_place(device: Any, stills: dict[str, np.ndarray]) -> None:
    for frame in (stills["dog.jpg"], noise(1920, 1080)):
        got, _ = gpu_letterbox(device, frame, zero_copy=True)
        assert_matches_cpu(got, cpu_letterbox(frame)[0])


@pytest.mark.gpu
def test_frame_buffer_is_used_in_place(gpu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, stream, cache = gpu
    frame = noise(641, 479)
    pre = GpuLetterbox(NET, np.float32, cache_dir=cache)
    out, host = cuda.DeviceBuffer(pre.nbytes), np.empty(NET, np.float32)
    try:
        staged = pre.frame_buffer(641, 479)
        staged[:] = frame
        monkeypatch.setattr(np, "copyto", lambda *a, **k: pytest.fail("run copied a frame already staged"))
        pre.run(staged, out.pointer, stream)
        monkeypatch.undo()
        out.download(host, stream)
        stream.synchronize()
    finally:
        out.free()
        pre.free()
    assert_matches_cpu(host, cpu_letterbox(frame)[0])


@pytest.mark.gpu
def test_one_instance_takes_frames_of_any_size_back_to_back(gpu: Any, stills: dict[str, np.ndarray]) -> None:
    """No synchronisation between the runs, two streams: each frame waits for the previous kernel
    before it overwrites the staged frame, and the buffers grow and shrink with the frames."""
    cuda, stream, cache = gpu
    frames = [noise(1920, 1080, 1), noise(641, 479, 2), stills["dog.jpg"], noise(3840, 2160, 3), noise(7, 5, 4)]
    other = cuda.Stream()
    pre = GpuLetterbox(NET, np.float16, cache_dir=cache)
    outs = [cuda.DeviceBuffer(pre.nbytes) for _ in frames]
    hosts = [np.empty(NET, np.float16) for _ in frames]
    try:
        for i, (frame, out, host) in enumerate(zip(frames, outs, hosts)):
            on = stream if i % 2 else other
            pre.run(frame, out.pointer, on)
            out.download(host, on)
        stream.synchronize()
        other.synchronize()
    finally:
        for out in outs:
            out.free()
        pre.free()
        other.free()
    for frame, host in zip(frames, hosts):
        assert_matches_cpu(host, cpu_letterbox(frame)[0])


@pytest.mark.gpu
def test_writes_exactly_one_image_at_the_pointer(gpu: Any) -> None:
    """A batch-2 input: image 1 at pointer + nbytes; image 0 and nothing else is touched."""
    cuda, stream, cache = gpu
    frame = noise(768, 576)
    pre = GpuLetterbox((2, 3, 416, 416), np.float32, cache_dir=cache)
    batch = cuda.HostBuffer((2, 3, 416, 416), np.float32)
    batch.array[:] = np.nan
    out = cuda.DeviceBuffer(batch.array.nbytes)
    try:
        out.upload(batch.array, stream)
        pre.run(frame, out.pointer + pre.nbytes, stream)
        out.download(batch.array, stream)
        stream.synchronize()
        result = batch.array.copy()
    finally:
        out.free()
        batch.free()
        pre.free()
    assert np.isnan(result[0]).all()
    assert_matches_cpu(result[1:], cpu_letterbox(frame)[0])


@pytest.mark.gpu
def test_launch_on_a_pitched_device_frame(gpu: Any) -> None:
    """A frame someone else put on the device, rows padded to 6,144 bytes."""
    cuda, stream, cache = gpu
    frame = noise(1920, 1080)
    pitched = cuda.HostBuffer((1080, 6144), np.uint8)
    pitched.array[:, :1920 * 3] = frame.reshape(1080, -1)
    source, out = cuda.DeviceBuffer(pitched.array.nbytes), cuda.DeviceBuffer(3 * 416 * 416 * 4)
    pre = GpuLetterbox(NET, np.float32, cache_dir=cache)
    host = np.empty(NET, np.float32)
    try:
        source.upload(pitched.array, stream)
        box = pre.launch(source.pointer, 1920, 1080, out.pointer, stream, pitch=6144)
        out.download(host, stream)
        stream.synchronize()
        with pytest.raises(FrameError, match="takes 5760 bytes at least"):
            pre.launch(source.pointer, 1920, 1080, out.pointer, stream, pitch=1000)
    finally:
        for owned in (source, out, pitched, pre):
            owned.free()
    want, want_box = cpu_letterbox(frame)
    assert box == want_box
    assert_matches_cpu(host, want)


@pytest.mark.gpu
@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frame_is_refused_before_the_gpu(gpu: Any, name: str) -> None:
    cuda, stream, cache = gpu
    pre = GpuLetterbox(NET, np.float32, cache_dir=cache)
    try:
        with pytest.raises(FrameError, match="BGR uint8"):
            pre.run(BAD_FRAMES[name], 0, stream)
    finally:
        pre.free()


@pytest.mark.gpu
def test_kernel_cache_is_used_and_a_damaged_file_is_recompiled(gpu: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, stream, _ = gpu
    GpuLetterbox(NET, np.float32, cache_dir=tmp_path).free()
    (cached,) = tmp_path.glob(f"{CUBIN_NAME}-*.cubin")
    real_compile = nvrtc.compile_cubin
    monkeypatch.setattr(nvrtc, "compile_cubin", lambda *a: pytest.fail("compiled although cached"))
    GpuLetterbox(NET, np.float32, cache_dir=tmp_path).free()
    cached.write_bytes(b"damaged")
    monkeypatch.setattr(nvrtc, "compile_cubin", real_compile)
    frame = noise(640, 480)
    got, _ = gpu_letterbox((cuda, stream, tmp_path), frame)
    assert cached.read_bytes().startswith(b"\x7fELF")
    assert_matches_cpu(got, cpu_letterbox(frame)[0])
