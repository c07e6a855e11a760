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
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.errors import EngineError, UsageError
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


def _parts(error: BaseException) -> tuple[str, str | None, str | None]:
    """An edge error's three parts as its user reads them: what, the values (note), the hint."""
    return error.what, error.note, error.hint


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


@pytest.mark.parametrize(("nbytes", "count"), [(0, 1), (1, 0), (-1, 3)])
def test_a_pool_needs_a_positive_size_and_count(ledger: fake_cuda.Ledger, nbytes: int, count: int) -> None:
    with pytest.raises(UsageError) as refused:
        SurfacePool(nbytes, count)
    assert _parts(refused.value) == ("a surface pool needs a positive size and count",
                                     f"nbytes {nbytes}, count {count}", "size it from the stream (pitch * rows of"
                                     " every plane); count >= the readers' in_flight + 2")
    assert ledger.live == {}


def test_the_smallest_pool_is_one_surface_of_one_byte(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(1, 1)
    assert pool.count == 1 and pool.nbytes == 1 and pool.acquire(0) is not None
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


@pytest.mark.parametrize("timeout", [None, 0.5])
def test_a_writer_waits_on_the_readers_event_for_the_time_it_has_left(
        ledger: fake_cuda.Ledger, stream: Any, monkeypatch: pytest.MonkeyPatch, timeout: float | None) -> None:
    pool = SurfacePool(64, 1)
    ledger.hold = True
    _frame(pool).release(stream)                # the reader's kernel is still enqueued
    (event,) = [entry[2] for entry in ledger.trace if entry[0] == "record"]
    waits: list[float | None] = []

    def wait(limit: float | None) -> bool:      # the kernel ends while the writer waits
        waits.append(limit)
        event.complete = True
        return True

    monkeypatch.setattr(event, "wait", wait)
    assert pool.acquire(timeout) is not None
    assert len(waits) == 1 and (waits[0] is None if timeout is None else 0 < waits[0] <= timeout), waits
    pool.free()


def test_a_writer_takes_a_surface_whose_readers_event_ended_while_it_looked(ledger: fake_cuda.Ledger,
                                                                           stream: Any) -> None:
    pool = SurfacePool(64, 1)
    ledger.hold = True
    _frame(pool).release(stream)
    (event,) = [entry[2] for entry in ledger.trace if entry[0] == "record"]
    answers = iter([False])

    def query() -> bool:                        # unfinished at the first look, finished right after it
        event.complete = True
        return next(answers, True)

    event.query = query
    assert pool.acquire(0.5) is not None, "a writer missed a surface whose reader's kernel ended as it looked"
    pool.free()


def test_the_events_of_a_surfaces_releases_are_reused_once_it_came_back(ledger: fake_cuda.Ledger,
                                                                      stream: Any) -> None:
    pool = SurfacePool(64, 1)
    for _ in range(3):
        _frame(pool).release(stream)
    recorded = [entry[2] for entry in ledger.trace if entry[0] == "record"]
    assert len(recorded) == 3 and len({id(event) for event in recorded}) == 1 and ledger.kinds()["event"] == 1
    pool.free()
    assert ledger.kinds() == {"context": 1, "stream": 1}       # the test's own


class _BrokenStream:
    """A stream CUDA refuses to record an event on."""

    @property
    def handle(self) -> int:
        raise EngineError("cuEventRecord failed", note="CUDA_ERROR_INVALID_HANDLE (stand-in)")


def test_a_release_whose_event_cannot_be_recorded_keeps_its_reference_and_the_event(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    with pytest.raises(EngineError, match="cuEventRecord failed"):
        frame.release(_BrokenStream())
    assert not frame.released and ledger.kinds()["event"] == 1
    frame.release(None)
    assert pool.acquire(0) is not None
    pool.free()
    assert ledger.live == {}                    # the event kept for the next release was freed with the pool


def test_releasing_twice_and_reading_after_release_are_errors(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    where = f"4x2 bgr at {frame.planes[0]:#x}"
    frame.release(None)
    assert frame.released
    with pytest.raises(UsageError) as refused:
        frame.release(None)
    assert _parts(refused.value) == ("DeviceFrame released more often than retained", where,
                                     "each reader releases its frame once")
    read_hint = "retain() the frame before handing it to another reader; release it last"
    for field in ("planes", "pitch", "pixel_format", "width", "height", "matrix", "full_range", "ready"):
        with pytest.raises(UsageError) as refused:
            getattr(frame, field)
        assert _parts(refused.value) == (f"DeviceFrame.{field} read after the frame was released", where, read_hint)
    for call in (frame.retain, frame.download_bgr):
        with pytest.raises(UsageError) as refused:
            call()
        assert _parts(refused.value) == ("DeviceFrame.planes read after the frame was released", where, read_hint)
    pool.free()


def test_a_surface_hands_out_one_frame_per_acquire(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    surface = pool.acquire(0)
    surface.frame(**BGR)
    with pytest.raises(UsageError) as refused:
        surface.frame(**BGR)
    assert _parts(refused.value) == ("Surface.frame() on a surface that is not acquired",
                                     "a surface hands out one frame per acquire",
                                     "acquire a surface from the pool for each frame")
    pool.free()


FORMAT_HINT = "a decoder's frames are nv12, or bgr/bgrx/rgba after a colour converter"
FIT_HINT = "size the pool from the stream's pitch and rows of every plane"


@pytest.mark.parametrize(("fields", "what", "note", "hint"), [
    ({"pixel_format": "yuyv"}, "unknown pixel format 'yuyv'", "known: bgr, bgrx, rgba, nv12", FORMAT_HINT),
    ({"width": 0}, "a device frame needs a positive size", "width 0, height 2", None),
    ({"height": -1}, "a device frame needs a positive size", "width 4, height -1", None),
    ({"plane_offsets": (0, 32)}, "a bgr frame has 1 plane(s)", "got offsets (0, 32)", None),
    ({"pixel_format": "nv12", "plane_offsets": (0,)}, "a nv12 frame has 2 plane(s)", "got offsets (0,)", None),
    ({"pitch": 11}, "pitch 11 bytes is shorter than a row", "4x2 bgr needs 12 bytes a row",
     "pass the decoder's pitch (stride) in bytes"),
    ({"plane_offsets": (40,)}, "the frame's planes do not fit its surface",
     "offsets (40,), pitch 16, 4x2 bgr: 72 bytes, surface 64 bytes", FIT_HINT),
    ({"plane_offsets": (33,)}, "the frame's planes do not fit its surface",
     "offsets (33,), pitch 16, 4x2 bgr: 65 bytes, surface 64 bytes", FIT_HINT),
    ({"plane_offsets": (-1,)}, "the frame's planes do not fit its surface",
     "offsets (-1,), pitch 16, 4x2 bgr: 31 bytes, surface 64 bytes", FIT_HINT),
    ({"pixel_format": "nv12", "height": 4, "plane_offsets": (0, 56)}, "the frame's planes do not fit its surface",
     "offsets (0, 56), pitch 16, 4x4 nv12: 88 bytes, surface 64 bytes", FIT_HINT),
])
def test_a_frame_that_does_not_fit_its_surface_is_refused(ledger: fake_cuda.Ledger, fields: dict, what: str,
                                                         note: str, hint: str | None) -> None:
    pool = SurfacePool(64, 1)
    surface = pool.acquire(0)
    with pytest.raises(FrameError) as refused:
        surface.frame(**{**BGR, **fields})
    assert _parts(refused.value) == (what, note, hint)
    surface.frame(**BGR)                        # still acquired after the refusal
    pool.free()


def test_a_frame_whose_rows_are_its_pitch_and_that_ends_at_the_surfaces_end_fits(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    surface = pool.acquire(0)
    ready = surface.ready_event()
    frame = surface.frame(**{**BGR, "pitch": 12, "plane_offsets": (40,), "ready": ready})     # 40 + 2 * 12 = 64
    assert (frame.planes, frame.pitch, frame.ready) == ((surface.pointer + 40,), 12, ready)
    assert (frame.pixel_format, frame.width, frame.height, frame.matrix, frame.full_range) == \
        ("bgr", 4, 2, "bt601", False)
    frame.release(None)
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
    with pytest.raises(UsageError) as refused:
        _ = held.planes
    assert _parts(refused.value) == ("DeviceFrame.planes read after its surface pool was freed", None,
                                     "stop the readers of a camera before its pool is freed")
    held.release(None)                          # a reader stopped after the pool: nothing left to do
    read.release(None)
    with pytest.raises(UsageError) as refused:
        pool.acquire(0)
    assert _parts(refused.value) == ("acquire on a freed surface pool", None, "free the pool after its reader stopped")


def test_each_release_after_the_pool_was_freed_counts_once(ledger: fake_cuda.Ledger) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    frame.retain()
    pool.free()
    frame.release(None)
    assert not frame.released, "one release ended two references"
    frame.release(None)
    assert frame.released
    with pytest.raises(UsageError, match="released more often than retained"):
        frame.release(None)


# --- a retired pool: freed once its frames came back, without its reader's close waiting ------------------------------

OWN = {"context": 1, "stream": 1}               # what the `stream` fixture holds: all that is left once the pool went


def test_a_retired_pool_whose_surfaces_are_all_back_is_freed_at_once(ledger: fake_cuda.Ledger, stream: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pool = SurfacePool(64, 2)
    surface = pool.acquire(0)
    ready = surface.ready_event()
    assert surface.ready_event() is ready and ledger.kinds()["event"] == 1     # one per surface, made once
    frame = surface.frame(**{**BGR, "ready": ready})
    frame.retain()
    frame.release(stream)                       # a reader whose kernel already ran
    frame.release(None)
    started: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", lambda thread: started.append(thread.name))
        pool.retire("video file a.mp4")
    assert started == [], "a pool whose surfaces were all back was left to a thread"
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


def test_a_retired_pool_waits_for_its_last_frame_until_the_deadline_however_short(
        ledger: fake_cuda.Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(surfaces, "RETIRE_S", 0.5)
    monkeypatch.setattr(surfaces, "time", SimpleNamespace(monotonic=lambda: 1000.0))     # the deadline never comes
    pool = SurfacePool(64, 2)
    held = _frame(pool)
    with caplog.at_level(logging.WARNING, logger="edge.surfaces"):
        pool.retire("video file a.mp4")
        assert ledger.kinds()["device buffer"] == 2, "freed before the deadline while a lane still held a frame"
        held.release(None)
        wait_for(lambda: ledger.live == {}, what="the pool freed after the last release")
    assert caplog.records == []


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
    assert retiring.name == "surfaces-retire" and retiring.daemon, "a retiring pool would hold the process's exit"
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


def test_download_bgr_copies_only_the_frames_bytes_after_its_ready_event(
        ledger: fake_cuda.Ledger, stream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[int] = []
    download = fake_cuda.DeviceBuffer.download

    def counted(buffer: fake_cuda.DeviceBuffer, host: np.ndarray, on: fake_cuda.Stream) -> None:
        copied.append(host.nbytes)
        download(buffer, host, on)

    monkeypatch.setattr(fake_cuda.DeviceBuffer, "download", counted)
    pool = SurfacePool(256, 1)
    surface = pool.acquire(0)
    ready = surface.ready_event()
    ready.record(stream)
    frame = surface.frame(**{**BGR, "plane_offsets": (32,), "ready": ready})   # its planes end at 32 + 2 * 16
    frame.download_bgr()
    assert copied == [64], "the whole surface was copied, not the frame's bytes"
    (wait,) = [entry for entry in ledger.trace if entry[0] == "wait"]
    (copy,) = [entry for entry in ledger.trace if entry[0] == "d2h"]
    assert wait[2] is ready and wait[1] == copy[1] and ledger.trace.index(wait) < ledger.trace.index(copy)
    frame.release(None)
    _frame(pool).download_bgr()                 # written already (ready None): nothing to wait for
    assert [entry[0] for entry in ledger.trace].count("wait") == 1
    pool.free()


class _Gate:
    """A lock that counts the threads come to take it, so a test can let them in once all are there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0

    def __enter__(self) -> None:
        self.waiting += 1
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_download_that_a_free_overtook_is_refused_by_name(ledger: fake_cuda.Ledger,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pool = SurfacePool(64, 1)
    frame = _frame(pool)
    gate = _Gate()
    monkeypatch.setattr(pool, "_download_lock", gate)
    refused: list[UsageError] = []

    def download() -> None:
        try:
            frame.download_bgr()
        except UsageError as error:
            refused.append(error)

    threads = [threading.Thread(target=download), threading.Thread(target=pool.free)]
    with gate.lock:                             # the download passed its frame's checks; then the pool is freed
        for count, thread in enumerate(threads, 1):
            thread.start()
            wait_for(lambda count=count: gate.waiting == count, what=f"thread {count} at the pool's lock")
    for thread in threads:
        thread.join(5)
    assert [_parts(error) for error in refused] == [("download_bgr on a freed surface pool", None,
                                                     "free the pool after its reader stopped")]
    assert ledger.live == {}
    frame.release(None)


def test_plane_shapes_of_each_format() -> None:
    assert plane_shapes("nv12", 5, 3) == [(3, 5), (2, 6)]
    assert plane_shapes("nv12", 1, 1) == [(1, 1), (1, 2)]      # the smallest frame: odd sizes round chroma up
    assert plane_shapes("nv12", 4, 2) == [(2, 4), (1, 4)]
    assert plane_shapes("bgrx", 5, 3) == [(3, 5, 4)]
    assert plane_shapes("rgba", 1, 1) == [(1, 1, 4)]
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
