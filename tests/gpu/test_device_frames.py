"""GPU tier (marked gpu): device frames from a real SurfacePool through a TensorRT slot (the stand-in TensorRT's
network returns its input, tests/support/fake_tensorrt.py) on real CUDA: the slot's letterbox of a frame read in
place equals the CPU letterbox of the same pixels, with and without CUDA graphs, in both copy modes; and real
events, not luck, keep a decoder from rewriting a surface before the slot's kernel has read it."""
from __future__ import annotations

import collections
import functools
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.engines.base import LetterboxPreprocessing
from tests.gpu.test_gpu import _identity_plan
from tests.gpu.test_surfaces import SPIN_SOURCE
from tests.support import fake_tensorrt

pytestmark = pytest.mark.gpu
SHAPE = (1, 3, 96, 128)
PITCH_PAD = 64                                          # bytes after each row, as a decoder's pitch has


@pytest.fixture(autouse=True)
def _stand_in_tensorrt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("edge.engines.repository.read_board", lambda root=Path("/"): fake_tensorrt.BOARD)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*out-of-thread context could not be cleaned up")
        yield


def _plan(tmp_path: Path) -> Path:
    from onnx import TensorProto

    return _identity_plan(tmp_path / "m.onnx", list(SHAPE), TensorProto.FLOAT)


def _write(pool: Any, surface: Any, image: np.ndarray, context: Any) -> dict[str, Any]:
    """Copy a BGR image into the surface (with `context` current), rows PITCH_PAD bytes longer than the image's;
    the frame's fields."""
    from edge.gpu import cuda

    height, width = image.shape[:2]
    pitch = width * 3 + PITCH_PAD
    rows = np.zeros((height, pitch), np.uint8)
    rows[:, :width * 3] = image.reshape(height, width * 3)
    if pool.mapped:
        surface.host[:rows.size] = rows.reshape(-1)
    else:
        with context.current():
            cuda.driver().memcpy_htod(surface.pointer, rows)
    return {"pixel_format": "bgr", "width": width, "height": height, "pitch": pitch, "plane_offsets": (0,),
            "matrix": "bt601", "full_range": False}


def _cpu(image: np.ndarray) -> tuple[np.ndarray, Any]:
    from edge.letterbox import letterbox_into

    cpu = np.zeros(SHAPE, np.float32)
    return cpu, letterbox_into(image, cpu)


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
@pytest.mark.parametrize("graphs", [False, True])
def test_device_frames_give_the_cpu_letterbox_of_their_pixels(tmp_path: Path, mode: str, graphs: bool) -> None:
    """Frames of three sizes written into a pool's surfaces (mapped ones in zerocopy mode), two in flight: each
    result equals the CPU letterbox bit for bit (BGR in: the kernel of section 3), and every surface comes back."""
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.gpu.surfaces import SurfacePool

    rng = np.random.default_rng(18)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in ((1920, 1080), (641, 479), (100, 300))] * 3
    pool = SurfacePool(1080 * (1920 * 3 + PITCH_PAD), 4, mapped=mode == "zerocopy")
    try:
        with TensorRTEngine(_plan(tmp_path), copy_mode=mode, preprocessing=LetterboxPreprocessing(fill=0.5),
                            cuda_graph=graphs) as engine:
            slot = engine.create_slot("cam", depth=2)
            assert slot.takes_device_frames and slot.graphs == graphs
            in_flight: collections.deque = collections.deque()
            for image in images:
                if len(in_flight) == 2:
                    (pending, box), (cpu, cpu_box) = in_flight.popleft()
                    assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu)
                surface = pool.acquire(10)
                frame = surface.frame(**_write(pool, surface, image, engine.context), ready=None)
                in_flight.append((slot.submit_device_frame(frame), _cpu(image)))
                assert frame.released
            for (pending, box), (cpu, cpu_box) in in_flight:
                assert box == cpu_box and np.array_equal(pending.wait(10)["out0"], cpu)
            assert slot.graph_problem is None
            surfaces = [pool.acquire(10) for _ in range(pool.count)]
            assert None not in surfaces
    finally:
        pool.free()


def test_a_decoder_cannot_rewrite_a_surface_before_the_slots_kernel_read_it(tmp_path: Path) -> None:
    """One surface. The decoder's stream runs a 300 ms kernel, then the frame's ready event: the slot's
    letterbox kernel waits for it, and the frame is released right after enqueuing it. The decoder then
    acquires the surface at once and overwrites it with other pixels: the acquire returns only once the
    slot's kernel ran, so the result is the letterbox of the first pixels, never of the second."""
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.gpu import cuda, nvrtc
    from edge.gpu.surfaces import SurfacePool

    rng = np.random.default_rng(7)
    first, second = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(2))
    pool = SurfacePool(240 * (320 * 3 + PITCH_PAD), 1)
    try:
        with TensorRTEngine(_plan(tmp_path), preprocessing=LetterboxPreprocessing(fill=0.5)) as engine:
            slot = engine.create_slot("cam", depth=1)
            with engine.context.current():
                stream, ready = cuda.Stream(), cuda.Event()
                spin = cuda.Kernel("spin", "Pi", functools.partial(nvrtc.cubin, SPIN_SOURCE, "spin",
                                                                   cache_dir=tmp_path))
                try:
                    surface = pool.acquire(0)
                    fields = _write(pool, surface, first, engine.context)
                    spin.launch((1, 1), (1, 1, 1), stream, surface.pointer, 300)    # "decoding" until 300 ms
                    ready.record(stream)
                    pending, _ = slot.submit_device_frame(surface.frame(**fields, ready=ready))
                    again = pool.acquire(10)
                    assert again is surface and ready.query(), "the surface came back before its frame was read"
                    _write(pool, again, second, engine.context)
                    cpu, _ = _cpu(first)
                    assert np.array_equal(pending.wait(10)["out0"], cpu)
                finally:
                    stream.synchronize()
                    for owned in (spin, ready, stream):
                        owned.free()
    finally:
        pool.free()
