"""Colour conversion in the letterbox kernels (edge/gpu/kernels.py, edge/gpu/letterbox.py): NV12, BGRx and RGBA.

CPU tier: the numpy reference `to_bgr` against OpenCV's cvtColor (BT.601 limited range, every Y,U,V) and against
the standards' equations (BT.601 and BT.709, limited and full range); launch_planes' checks on the CUDA stand-in
(a clear error, nothing enqueued); and the kernels themselves, compiled for this CPU (tests/support/host_kernels.py)
and launched through GpuLetterbox, on a vtest.avi frame converted to NV12 and on noise, against cvtColor (or
to_bgr) + the CPU letterbox. GPU tier (marked gpu): the same kernel tests on the GPU, copy and zero copy.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import pytest

from edge.gpu.kernels import MATRICES, OPENCV_BT601_LIMITED, yuv_coefficients
from edge.gpu.letterbox import MAX_ABS_DIFF, GpuLetterbox, to_bgr
from edge.letterbox import FrameError, Letterbox, letterbox_into
from tests.support import fake_cuda

NET = (1, 3, 416, 416)
COLOURS = [("bt601", False), ("bt601", True), ("bt709", False), ("bt709", True)]
COLOUR_IDS = ["601-limited", "601-full", "709-limited", "709-full"]
DTYPES = [pytest.param(np.float32, id="fp32"), pytest.param(np.float16, id="fp16")]
COPIES = [pytest.param(False, id="copy"), pytest.param(True, id="zero-copy")]

# The standards, typed here from them (not from edge): luma weights Kr, Kb of ITU-R BT.601-7 (section 2.5.1) and
# ITU-R BT.709-6 (item 3.2). 8-bit limited range (BT.601-7 2.5.3, BT.709-6 item 3.4): Y = 16 + 219 E'Y,
# Cb/Cr = 128 + 224 E'Cb/Cr. Full range (Rec. ITU-T H.264 (08/2021) equations E-7 to E-9 with
# video_full_range_flag 1): Y = 255 E'Y, Cb/Cr = 128 + 255 E'Cb/Cr.
STANDARDS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _scales(full_range: bool) -> tuple[float, float, float]:
    """(luma offset, luma levels, chroma levels) of 8-bit video."""
    return (0.0, 255.0, 255.0) if full_range else (16.0, 219.0, 224.0)


def standard_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """8-bit Y, Cb, Cr -> 8-bit B, G, R by the standards' equations in float64, rounded to nearest."""
    kr, kb = STANDARDS[matrix]
    offset, luma_levels, chroma_levels = _scales(full_range)
    ey, pb, pr = (y - offset) / luma_levels, (u - 128.0) / chroma_levels, (v - 128.0) / chroma_levels
    r, b = ey + 2 * (1 - kr) * pr, ey + 2 * (1 - kb) * pb                # E'Cr = (E'R - E'Y) / (2 (1 - Kr))
    g = (ey - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.rint(np.stack([b, g, r], axis=-1) * 255), 0, 255).astype(np.uint8)


def nv12_of(bgr: np.ndarray, matrix: str, full_range: bool) -> list[np.ndarray]:
    """[luma, interleaved chroma] of a BGR frame by the standards' equations, chroma the mean of each 2x2 block."""
    kr, kb = STANDARDS[matrix]
    offset, luma_levels, chroma_levels = _scales(full_range)
    b, g, r = (bgr[:, :, i].astype(np.float64) / 255 for i in range(3))
    ey = kr * r + (1 - kr - kb) * g + kb * b
    height, width = ey.shape
    pb, pr = ((c - ey) / (2 * (1 - k)) for c, k in ((b, kb), (r, kr)))
    blocks = [p.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for p in (pb, pr)]
    luma = np.clip(np.rint(offset + luma_levels * ey), 0, 255).astype(np.uint8)
    chroma = np.clip(np.rint(128 + chroma_levels * np.stack(blocks, axis=-1)), 0, 255).astype(np.uint8)
    return [luma, chroma.reshape(height // 2, width)]


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def packed_of(bgr: np.ndarray, pixel_format: str, seed: int = 0) -> np.ndarray:
    """The frame as bgr, bgrx or rgba, the fourth byte noise (nobody reads it)."""
    order = {"bgr": [0, 1, 2], "bgrx": [0, 1, 2], "rgba": [2, 1, 0]}[pixel_format]
    extra = [noise((*bgr.shape[:2], 1), seed)] if pixel_format != "bgr" else []
    return np.ascontiguousarray(np.concatenate([bgr[:, :, order], *extra], axis=2))


# ---- the numpy reference -------------------------------------------------------------------------------

def every_yuv() -> list[np.ndarray]:
    """A 4096x4096 NV12 frame holding each of the 2**24 (Y, U, V): each U,V pair in 64 blocks of 2x2, whose
    four Y run through 0..255."""
    block = np.arange(2048 * 2048).reshape(2048, 2048)
    pair, quad = block // 64, block % 64
    chroma = np.stack([pair // 256, pair % 256], axis=-1).astype(np.uint8).reshape(2048, 4096)
    luma = (4 * quad)[:, :, None, None] + np.array([[0, 1], [2, 3]])
    return [luma.transpose(0, 2, 1, 3).reshape(4096, 4096).astype(np.uint8), chroma]


def test_the_reference_of_bt601_limited_is_opencvs_cvtcolor() -> None:
    """Equal over every Y, U, V (footroom and out-of-gamut included): OpenCV's own fixed-point constants."""
    luma, chroma = every_yuv()
    want = cv2.cvtColor(np.concatenate([luma, chroma]), cv2.COLOR_YUV2BGR_NV12)
    np.testing.assert_array_equal(to_bgr([luma, chroma], "nv12"), want)
    assert yuv_coefficients("bt601", False) == OPENCV_BT601_LIMITED


def test_the_matrices_are_the_standards() -> None:
    assert {name: tuple(matrix) for name, matrix in MATRICES.items()} == STANDARDS


@pytest.mark.parametrize("matrix,full_range", COLOURS, ids=COLOUR_IDS)
def test_the_reference_follows_the_standards_equations(matrix: str, full_range: bool) -> None:
    """Within one level of the float equations over the legal levels (limited: Y 16-235, U,V 16-240), each 2x2
    block's pixels taking its U,V; the same again read with the chroma as H/2 x W/2 x 2. Measured: equal for
    96.5% of the values with OpenCV's BT.601 limited constants, 99.99% to 100% for the other three."""
    low, high = (0, 255) if full_range else (16, 240)
    rng = np.random.default_rng(601 + full_range)
    height, width = 512, 1024
    luma = rng.integers(low, (255 if full_range else 235) + 1, (height, width)).astype(np.uint8)
    chroma = rng.integers(low, high + 1, (height // 2, width // 2, 2)).astype(np.uint8)
    chroma[0, :4] = [[low, low], [low, high], [high, low], [high, high]]        # the gamut's corners
    luma[:2, :8] = [[low] * 8, [255 if full_range else 235] * 8]
    got = to_bgr([luma, chroma], "nv12", matrix=matrix, full_range=full_range)
    u, v = (chroma[:, :, i].repeat(2, axis=0).repeat(2, axis=1).astype(np.float64) for i in (0, 1))
    want = standard_bgr(luma.astype(np.float64), u, v, matrix, full_range)
    assert np.abs(got.astype(int) - want).max() <= 1
    opencv = (matrix, full_range) == ("bt601", False)      # its constants are the standard's to 3 decimals
    assert np.mean(got == want) > (0.95 if opencv else 0.999)   # else only near-ties round the other way
    np.testing.assert_array_equal(to_bgr([luma, chroma.reshape(height // 2, width)], "nv12", matrix=matrix,
                                         full_range=full_range), got)


def test_the_reference_reads_packed_formats_by_their_byte_order(vtest_frame: np.ndarray) -> None:
    for pixel_format in ("bgr", "bgrx", "rgba"):
        got = to_bgr([packed_of(vtest_frame, pixel_format)], pixel_format)
        np.testing.assert_array_equal(got, vtest_frame)
        assert got.flags.c_contiguous


@pytest.mark.parametrize("planes,pixel_format,problem", [
    ([np.zeros((4, 6), np.uint8), np.zeros((2, 6), np.uint8)], "i420", "unknown pixel format 'i420'"),
    ([np.zeros((4, 6), np.uint8)], "nv12", "planes of a nv12 frame"),
    ([np.zeros((4, 6), np.uint8), np.zeros((2, 4), np.uint8)], "nv12", "planes of a nv12 frame"),
    ([np.zeros((4, 6), np.uint16), np.zeros((2, 6), np.uint8)], "nv12", "planes of a nv12 frame"),
    ([np.zeros((3, 6), np.uint8), np.zeros((1, 6), np.uint8)], "nv12", "even width and height"),
    ([np.zeros((4, 6, 3), np.uint8)], "bgrx", "planes of a bgrx frame"),
    ([np.zeros((0, 6, 4), np.uint8)], "rgba", "planes of a rgba frame"),
    (["not an array"], "bgr", "planes of a bgr frame"),
], ids=["format", "one plane", "chroma width", "uint16", "odd height", "3 channels", "empty", "not an array"])
def test_the_reference_refuses_what_is_not_a_frame(planes: list[Any], pixel_format: str, problem: str) -> None:
    with pytest.raises(FrameError, match=problem) as caught:
        to_bgr(planes, pixel_format)
    assert caught.value.note and caught.value.hint


def test_the_reference_refuses_an_unknown_matrix() -> None:
    with pytest.raises(FrameError, match="unknown colour matrix 'bt2020'") as caught:
        to_bgr([np.zeros((2, 2), np.uint8), np.zeros((1, 2), np.uint8)], "nv12", matrix="bt2020")
    assert caught.value.note == "known: bt601, bt709" and "matrix_coefficients" in caught.value.hint


# ---- launch_planes' checks, on the CUDA stand-in -------------------------------------------------------

@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[fake_cuda.Ledger, GpuLetterbox, Any]]:
    """A GpuLetterbox and a stream on the CUDA stand-in; everything freed after the test."""
    ledger = fake_cuda.install(monkeypatch)
    from edge.gpu import cuda

    context = cuda.Context(0)
    with context.current():
        stream = cuda.Stream()
        pre = GpuLetterbox(NET, np.float32)
        yield ledger, pre, stream
        pre.free()
        stream.free()
    context.detach()
    assert ledger.live == {}


FRAME = 0x7F0000000000          # a device address of the stand-in's kind (nothing is read from it here)
BAD_LAUNCHES = {
    "pixel format": ({"pixel_format": "yuyv"}, "unknown pixel format 'yuyv'", "known: bgr, bgrx, rgba, nv12"),
    "matrix": ({"pixel_format": "nv12", "matrix": "BT.709"}, "unknown colour matrix 'BT.709'", "known: bt601, bt709"),
    "range": ({"pixel_format": "nv12", "full_range": "full"}, "full_range must be True or False", "got 'full'"),
    "odd width": ({"pixel_format": "nv12", "width": 1919}, "even width and height", "1919x1080"),
    "odd height": ({"pixel_format": "nv12", "height": 1079}, "even width and height", "1920x1079"),
    "empty": ({"pixel_format": "rgba", "height": 0}, "non-empty rgba frame", "width 1920, height 0"),
    "bgrx pitch": ({"pixel_format": "bgrx", "pitch": 5760}, "takes 7680 bytes at least", "pitch 5760 bytes"),
    "nv12 pitch": ({"pixel_format": "nv12", "pitch": 1904}, "takes 1920 bytes at least", "pitch 1904 bytes"),
    "nv12 one plane": ({"pixel_format": "nv12", "planes": (FRAME,)}, "has 2 plane", "got 1 pointers"),
    "rgba two planes": ({"pixel_format": "rgba", "planes": (FRAME, FRAME)}, "has 1 plane", "got 2 pointers"),
    "null chroma": ({"pixel_format": "nv12", "planes": (FRAME, 0)}, "no device address", f"{FRAME:#x}, 0x0"),
}


def launch_arguments(pixel_format: str = "bgr", **change: Any) -> dict[str, Any]:
    """launch_planes' arguments for a 1920x1080 frame of the format, with `change` applied."""
    bytes_per_pixel = {"nv12": 1, "bgr": 3}.get(pixel_format, 4)
    planes = (FRAME, FRAME + 1920 * 1080) if pixel_format == "nv12" else (FRAME,)
    return {"planes": planes, "pitch": 1920 * bytes_per_pixel, "width": 1920, "height": 1080,
            "out_pointer": FRAME * 2, "pixel_format": pixel_format, **change}


@pytest.mark.parametrize("case", BAD_LAUNCHES)
def test_launch_planes_refuses_a_frame_it_cannot_read_and_enqueues_nothing(
        stand_in: tuple[fake_cuda.Ledger, GpuLetterbox, Any], case: str) -> None:
    ledger, pre, stream = stand_in
    change, what, note = BAD_LAUNCHES[case]
    before = list(ledger.trace)
    with pytest.raises(FrameError, match=what) as caught:
        pre.launch_planes(stream=stream, **launch_arguments(**change))
    assert note in caught.value.note and caught.value.hint
    assert ledger.trace == before and ledger.kinds()["kernel"] == 1       # not even a kernel loaded


def test_launch_planes_loads_each_formats_kernel_once_and_records_after_it(
        stand_in: tuple[fake_cuda.Ledger, GpuLetterbox, Any]) -> None:
    ledger, pre, stream = stand_in
    for pixel_format in ("nv12", "nv12", "bgrx", "bgr"):
        box = pre.launch_planes(stream=stream, **launch_arguments(pixel_format))
        assert box == Letterbox.fit(1920, 1080, 416, 416)
        assert ledger.trace[-2:] == [("kernel", stream.handle, FRAME * 2), ("record", stream.handle, pre._done)]
    assert ledger.kinds()["kernel"] == 3                                  # bgr (made with it), nv12, bgrx


# ---- the kernels: on this CPU (tests/support/host_kernels.py) and on the GPU ---------------------------

def letterbox_planes(device: tuple[Any, Any, Any], planes: Sequence[np.ndarray], pitch: int, width: int,
                     height: int, dtype: Any, *, shape: tuple[int, ...] = NET, zero_copy: bool = False,
                     **colour: Any) -> tuple[np.ndarray, Letterbox]:
    """The planes laid out in one buffer, 256-byte aligned, rows `pitch` bytes apart with noise between them,
    uploaded (or mapped: zero copy), letterboxed by launch_planes, the output downloaded."""
    cuda, stream, cache = device
    rows = [plane.reshape(plane.shape[0], -1) for plane in planes]
    offsets = np.cumsum([0] + [-(-len(r) * pitch // 256) * 256 for r in rows])
    staged = cuda.HostBuffer((int(offsets[-1]),), np.uint8, mapped=zero_copy)
    staged.array[:] = noise(staged.array.shape, 1)
    for plane, offset in zip(rows, offsets):
        staged.array[offset:offset + len(plane) * pitch].reshape(len(plane), pitch)[:, :plane.shape[1]] = plane
    pre = GpuLetterbox(shape, dtype, cache_dir=cache)
    frame = None if zero_copy else cuda.DeviceBuffer(staged.array.nbytes)
    out, result = cuda.DeviceBuffer(pre.nbytes), np.empty((1, *shape[1:]), dtype)
    try:
        if frame is not None:
            frame.upload(staged.array, stream)
        base = staged.device_pointer() if zero_copy else frame.pointer
        box = pre.launch_planes([base + int(o) for o in offsets[:-1]], pitch, width, height, out.pointer, stream,
                                **colour)
        out.download(result, stream)
        stream.synchronize()
    finally:
        for owned in (out, frame, staged, pre):
            if owned is not None:
                owned.free()
    return result, box


def cpu_path(bgr: np.ndarray, shape: tuple[int, ...] = NET) -> tuple[np.ndarray, Letterbox]:
    out = np.empty((1, *shape[1:]), np.float32)
    return out, letterbox_into(bgr, out)


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    """The CPU path's values (fp16: its fp32 cast), so within 1/255 and within MAX_ABS_DIFF."""
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    assert np.abs(got.astype(np.float32) - want).max() <= min(1 / 255, MAX_ABS_DIFF[got.dtype])


def nv12_oracle(planes: list[np.ndarray], matrix: str, full_range: bool) -> np.ndarray:
    """OpenCV's cvtColor where it can (BT.601 limited), else the reference (checked against the standards)."""
    if (matrix, full_range) == ("bt601", False):
        return cv2.cvtColor(np.concatenate(planes), cv2.COLOR_YUV2BGR_NV12)
    return to_bgr(planes, "nv12", matrix=matrix, full_range=full_range)


@pytest.mark.parametrize("zero_copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("matrix,full_range", COLOURS, ids=COLOUR_IDS)
def test_nv12_of_a_camera_frame_matches_the_cpu_path(device: Any, vtest_frame: np.ndarray, matrix: str,
                                                     full_range: bool, dtype: Any, zero_copy: bool) -> None:
    planes = nv12_of(vtest_frame, matrix, full_range)
    height, width = planes[0].shape
    got, box = letterbox_planes(device, planes, width, width, height, dtype, zero_copy=zero_copy,
                                pixel_format="nv12", matrix=matrix, full_range=full_range)
    want, want_box = cpu_path(nv12_oracle(planes, matrix, full_range))
    assert box == want_box
    assert_matches(got, want)


@pytest.mark.parametrize("zero_copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pixel_format", ["bgr", "bgrx", "rgba"])
def test_packed_camera_frames_match_the_cpu_letterbox(device: Any, vtest_frame: np.ndarray, pixel_format: str,
                                                      dtype: Any, zero_copy: bool) -> None:
    pixels = packed_of(vtest_frame, pixel_format)
    height, width, depth = pixels.shape
    got, box = letterbox_planes(device, [pixels], width * depth + 64, width, height, dtype, zero_copy=zero_copy,
                                pixel_format=pixel_format)
    want, want_box = cpu_path(vtest_frame)
    assert box == want_box
    assert_matches(got, want)


# (width, height, pitch): 1080p cropped to partial blocks with a decoder's pitch, the smallest, a 2x reduction
# (OpenCV takes INTER_AREA there), an upscale, a tall strip, 4K
NV12_SIZES = [(1918, 1078, 2048), (2, 2, 2), (832, 832, 832), (200, 100, 256), (4, 3000, 64), (3840, 2160, 3840)]


@pytest.mark.parametrize("matrix,full_range", [COLOURS[0], COLOURS[3]], ids=[COLOUR_IDS[0], COLOUR_IDS[3]])
@pytest.mark.parametrize("width,height,pitch", NV12_SIZES)
def test_nv12_noise_of_any_even_size_matches_the_cpu_path(device: Any, width: int, height: int, pitch: int,
                                                           matrix: str, full_range: bool) -> None:
    """Independent random luma and chroma: the hardest case for the chroma each tap takes."""
    planes = [noise((height, width), 2), noise((height // 2, width), 3)]
    want = nv12_oracle(planes, matrix, full_range)
    for shape, dtype in ((NET, np.float32), ((1, 3, 384, 640), np.float16)):
        got, box = letterbox_planes(device, planes, pitch, width, height, dtype, shape=shape, pixel_format="nv12",
                                    matrix=matrix, full_range=full_range)
        want_out, want_box = cpu_path(want, shape)
        assert box == want_box
        assert_matches(got, want_out)


@pytest.mark.parametrize("pixel_format", ["bgrx", "rgba"])
@pytest.mark.parametrize("width,height", [(641, 479), (1, 1), (7, 5), (100, 3000)])
def test_packed_noise_of_odd_sizes_matches_the_cpu_letterbox(device: Any, pixel_format: str, width: int,
                                                              height: int) -> None:
    bgr = noise((height, width, 3), 4)
    got, box = letterbox_planes(device, [packed_of(bgr, pixel_format)], width * 4, width, height, np.float32,
                                pixel_format=pixel_format)
    want, want_box = cpu_path(bgr)
    assert box == want_box
    assert_matches(got, want)
