"""Device frames (edge/gpu/surfaces.py): the pool's bound, references, event-ordered reuse and errors against the
CUDA stand-in's ledger (tests/support/fake_cuda.py: held events stay unfinished until the test finishes them);
a retired pool freed once its frames came back or at its deadline; on the GPU tier (marked gpu) real events order a
surface's reuse behind a kernel that still reads it."""
from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edge.errors import UsageError
from edge.gpu import cuda, nvrtc, surfaces
from edge.gpu.letterbox import to_bgr
from edge.gpu.surfaces import SurfacePool, plane_shapes
from edge.letterbox import FrameError
from tests.conftest import wait_for
from tests.support import fake_cuda

BGR = {"pixel_format": "bgr", "width": 4, "height": 2, "pitch": 16, "plane_offsets": (0,), "matrix": "bt601",
       "full_range": False, "ready": None}


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> fake_cuda.Ledger:
    return fake_cuda.install(monkeypatch)


@pytest.fixture
def stream(ledger: fake_cuda.Ledger) -> Iterator[Any]:
    context = cuda.Context()
    with context.current():
        made = cuda.Stream()
    yield made
    with context.current():
        made.free()
    context.detach()


def _frame(pool: SurfacePool, **fields: Any):
    surface = pool.acquire(0)
    assert surface is not None, "the pool had no free surface"
    return surface.frame(**{**BGR, **fields})


def test_a_pool_holds_its_buffers_until_freed(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 3)
    assert ledger.kinds() == {"context": 1, "device buffer": 3, "stream": 1}
    assert pool.count == 3 and len({pool.acquire(0).pointer for _ in range(3)}) == 3
    pool.free()
    pool.free()
    assert ledger.live == {}


def test_a_mapped_pool_reads_in_place_through_its_host_views(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 2, mapped=True)
    assert ledger.kinds() == {"context": 1, "mapped host buffer": 2, "stream": 1}
    surface = pool.acquire(0)
    assert surface.host.dtype == np.uint8 and surface.host.shape == (64,)
    assert surface.pointer == surface.host.ctypes.data           # the stand-in maps a host buffer at its address
    pool.free()
    assert ledger.live == {}


@pytest.mark.parametrize("failing", range(1, 5))
def test_a_failed_allocation_frees_what_the_pool_made(ledger: fake_cuda.Ledger, failing: int) -> None:
    ledger.fail_at = failing + 1                # allocation 1 is the context (which cannot fail here)
    with pytest.raises(MemoryError):
        SurfacePool(64, 3)
    assert ledger.live == {}


def test_the_pool_is_bounded_and_a_released_frame_gives_its_surface_back(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 2)
    first, second = _frame(pool), _frame(pool)
    assert pool.acquire(0) is None and pool.acquire(0.01) is None
    pointer = first.planes[0]
    first.retain()
    first.release(None)
    assert pool.acquire(0) is None, "a surface with a reader left was handed out"
    first.release(None)
    again = pool.acquire(0)
    assert again is not None and again.pointer == pointer
    second.release(None)
    pool.free()
    assert ledger.live == {}


def test_a_surface_waits_for_every_reader_and_each_readers_event(ledger: fake_cuda.Ledger, stream: Any) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    frame.retain()
    frame.retain()
    ledger.hold = True
    frame.release(stream)                       # reader 1: its kernel is still enqueued
    frame.release(None)                         # the producer
    assert pool.acquire(0) is None, "a surface with a reader left was handed out"
    frame.release(stream)                       # reader 2
    recorded = [entry[2] for entry in ledger.trace if entry[0] == "record"]
    assert len(recorded) == 2 and all(event.stream is stream for event in recorded)
    assert pool.acquire(0) is None, "a surface was handed out while a reader's event was pending"
    recorded[0].complete = True
    assert pool.acquire(0) is None, "a surface was handed out while the second reader's event was pending"
    ledger.finish()
    assert pool.acquire(0) is not None
    assert ledger.kinds()["event"] == 2         # kept for the next releases
    pool.free()
    assert ledger.kinds() == {"context": 1, "stream": 1}       # the test's own


def test_a_waiting_writer_gets_the_surface_a_reader_releases(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    got: list[Any] = []
    writer = threading.Thread(target=lambda: got.append(pool.acquire(10)))
    writer.start()
    frame.release(None)
    wait_for(lambda: got, what="the writer's acquire")
    writer.join()
    assert got[0] is not None
    pool.free()


def test_releasing_twice_and_reading_after_release_are_errors(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    frame.release(None)
    assert frame.released
    with pytest.raises(UsageError, match="released more often than retained"):
        frame.release(None)
    for field in ("planes", "pitch", "pixel_format", "width", "height", "matrix", "full_range", "ready"):
        with pytest.raises(UsageError, match=f"DeviceFrame.{field} read after the frame was released"):
            getattr(frame, field)
    with pytest.raises(UsageError, match="read after the frame was released"):
        frame.retain()
    with pytest.raises(UsageError, match="read after the frame was released"):
        frame.download_bgr()
    pool.free()


def test_a_surface_hands_out_one_frame_per_acquire(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    surface = pool.acquire(0)
    surface.frame(**BGR)
    with pytest.raises(UsageError, match="not acquired"):
        surface.frame(**BGR)
    pool.free()


@pytest.mark.parametrize(("fields", "message"), [
    ({"pixel_format": "yuyv"}, "unknown pixel format 'yuyv'"),
    ({"width": 0}, "positive size"),
    ({"plane_offsets": (0, 32)}, "a bgr frame has 1 plane"),
    ({"pixel_format": "nv12", "plane_offsets": (0,)}, "a nv12 frame has 2 plane"),
    ({"pitch": 11}, "pitch 11 bytes is shorter than a row"),
    ({"plane_offsets": (40,)}, "do not fit its surface"),
    ({"plane_offsets": (-1,)}, "do not fit its surface"),
    ({"pixel_format": "nv12", "height": 4, "plane_offsets": (0, 56)}, "do not fit its surface"),
])
def test_a_frame_that_does_not_fit_its_surface_is_refused(ledger: fake_cuda.Ledger, fields: dict, message: str) -> None:
    pool = SurfacePool(64, 1)
    surface = pool.acquire(0)
    with pytest.raises(FrameError, match=message):
        surface.frame(**{**BGR, **fields})
    surface.frame(**BGR)                        # still acquired after the refusal
    pool.free()


def test_freeing_with_frames_out_waits_for_their_work_and_frees_everything(ledger: fake_cuda.Ledger,
                                                                          stream: Any) -> None:
    pool = SurfacePool(64, 2)
    held, read = _frame(pool), _frame(pool)
    ledger.hold = True
    read.retain()
    read.release(stream)
    pool.free()
    assert ("synchronize context",) in ledger.trace
    assert ledger.kinds() == {"context": 1, "stream": 1}       # the test's own
    with pytest.raises(UsageError, match="after its surface pool was freed"):
        _ = held.planes
    held.release(None)                          # a reader stopped after the pool: nothing left to do
    read.release(None)
    with pytest.raises(UsageError, match="acquire on a freed surface pool"):
        pool.acquire(0)


# --- a retired pool: freed once its frames came back, without its reader's close waiting ------------------------------

OWN = {"context": 1, "stream": 1}               # what the `stream` fixture holds: all that is left once the pool went


def test_a_retired_pool_whose_surfaces_are_all_back_is_freed_at_once(ledger: fake_cuda.Ledger, stream: Any) -> None:
    pool = SurfacePool(64, 2)
    surface = pool.acquire(0)
    ready = surface.ready_event()
    assert surface.ready_event() is ready and ledger.kinds()["event"] == 1     # one per surface, made once
    frame = surface.frame(**{**BGR, "ready": ready})
    frame.retain()
    frame.release(stream)                       # a reader whose kernel already ran
    frame.release(None)
    pool.retire("video file a.mp4")
    assert ledger.kinds() == OWN                # surfaces, the ready event, the release's event, the pool's stream
    assert ("synchronize context",) not in ledger.trace        # nothing was waited for
    pool.retire("video file a.mp4")             # once


def test_a_retired_pool_is_freed_when_the_last_frame_comes_back_after_its_readers_work(
        ledger: fake_cuda.Ledger, stream: Any) -> None:
    pool = SurfacePool(64, 2)
    held, back = _frame(pool), _frame(pool)
    back.release(None)
    pool.retire("video file a.mp4")             # returns at once: the lanes still hold a frame
    assert ledger.kinds()["device buffer"] == 2 and held.width == 4, "freed while a lane still held a frame"
    ledger.hold = True
    held.release(stream)                        # the lane's kernel, enqueued on `stream`, has not run yet
    wait_for(lambda: ledger.kinds() == OWN, what="the pool freed after the last release")
    assert ("synchronize context",) in ledger.trace, "freed without waiting for the kernel reading the surface"


def test_a_retired_pool_is_freed_at_the_deadline_and_a_frame_held_past_it_is_unreadable(
        ledger: fake_cuda.Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(surfaces, "RETIRE_S", 0.05)
    pool = SurfacePool(64, 3)
    held = _frame(pool)
    with caplog.at_level(logging.WARNING, logger="edge.surfaces"):
        pool.retire("RTSP stream rtsp://cam/live")
        wait_for(lambda: ledger.live == {}, what="the pool freed at the deadline")
    assert caplog.messages == ["RTSP stream rtsp://cam/live: 1 of its 3 frame surfaces still held 0 s after it closed;"
                               " freed all the same"]
    with pytest.raises(UsageError, match="after its surface pool was freed"):
        _ = held.planes
    held.release(None)


def test_a_pool_its_owner_frees_while_it_retires_is_freed_once_without_a_word(
        ledger: fake_cuda.Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    failures: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    pool = SurfacePool(64, 1)
    held = _frame(pool)
    before = set(threading.enumerate())
    pool.retire("video file a.mp4")
    (retiring,) = set(threading.enumerate()) - before
    pool.free()
    retiring.join(5)
    assert not retiring.is_alive() and failures == [] and ledger.live == {} and caplog.records == []
    held.release(None)


@pytest.mark.parametrize("mapped", [False, True])
def test_download_bgr_gives_the_planes_to_the_colour_reference(ledger: fake_cuda.Ledger, mapped: bool) -> None:
    rng = np.random.default_rng(18)
    width, height, pitch = 6, 4, 8
    pool = SurfacePool(128, 1, mapped=mapped)
    surface = pool.acquire(0)
    memory = surface.host if mapped else ledger.memory[surface.pointer]
    memory[:] = rng.integers(0, 256, memory.size, dtype=np.uint8)
    frame = surface.frame(**{**BGR, "pixel_format": "nv12", "width": width, "height": height, "pitch": pitch,
                             "plane_offsets": (16, 64), "matrix": "bt709", "full_range": True})
    luma = memory[16:16 + height * pitch].reshape(height, pitch)[:, :width]
    chroma = memory[64:64 + height // 2 * pitch].reshape(height // 2, pitch)[:, :width]
    expected = to_bgr([luma, chroma], "nv12", matrix="bt709", full_range=True)
    np.testing.assert_array_equal(frame.download_bgr(), expected)
    bgr = rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)
    frame.release(None)
    surface = pool.acquire(0)
    memory[:32] = np.pad(bgr.reshape(2, 12), ((0, 0), (0, 4))).reshape(-1)
    frame = surface.frame(**BGR)
    np.testing.assert_array_equal(frame.download_bgr(), bgr)
    frame.release(None)
    pool.free()
    assert ledger.live == {}


def test_plane_shapes_of_each_format() -> None:
    assert plane_shapes("nv12", 5, 3) == [(3, 5), (2, 6)]
    assert plane_shapes("bgrx", 5, 3) == [(3, 5, 4)]
    assert plane_shapes("bgr", 5, 3) == [(3, 5, 3)]


# --- GPU tier ---------------------------------------------------------------------------------------------------

SPIN_SOURCE = r"""
extern "C" __global__ void spin(const unsigned char* surface, int milliseconds)
{
    for (int i = 0; i < milliseconds; i++)
        __nanosleep(1000000);
}
"""


@pytest.mark.gpu
@pytest.mark.parametrize("mapped", [False, True])
def test_real_events_keep_a_surface_until_the_kernel_reading_it_ran(mapped: bool, tmp_path: Any) -> None:
    """A reader releases a surface right after enqueuing a 300 ms kernel that reads it: the pool hands the
    surface out again only once that kernel finished (the kernel's own event says so), never before."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*out-of-thread context could not be cleaned up")
        pool = SurfacePool(1 << 20, 1, mapped=mapped)
        context = cuda.Context()
        try:
            with context.current():
                stream, kernel_done = cuda.Stream(), cuda.Event()
                kernel = cuda.Kernel("spin", "Pi", functools.partial(nvrtc.cubin, SPIN_SOURCE, "spin",
                                                                     cache_dir=tmp_path))
                frame = pool.acquire(0).frame(**BGR)
                frame.retain()
                kernel.launch((1, 1), (1, 1, 1), stream, frame.planes[0], 300)
                kernel_done.record(stream)              # before the release's event: done when that one is
                frame.release(stream)
                frame.release(None)
                assert pool.acquire(0) is None, "the surface came back while its reader's kernel ran"
                again = pool.acquire(10)
                assert again is not None and kernel_done.query(), "the surface came back before the kernel ended"
                for owned in (kernel, kernel_done, stream):
                    owned.free()
        finally:
            context.detach()
            pool.free()
