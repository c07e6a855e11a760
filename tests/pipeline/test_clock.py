"""A live stream's capture times (edge/pipeline/clock.py): the least-delay mapping and its error bound, drift, every
bad timestamp's defined result; then a real RTSP camera (tests/support/rtsp.py), whose frames carry the times its
stream stamped, not the times the decoder returned them."""
from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterator

import pytest

from edge.config.cameras import parse_uri
from edge.pipeline.cameras import Camera
from edge.pipeline.clock import JUMP_NS, WINDOW_NS, StreamClock
from edge.pipeline.readers import open_reader
from tests.conftest import wait_for
from tests.support import rtsp

MS = 1_000_000
T0 = 5_000 * MS                # CLOCK_MONOTONIC when the stream's pts 0 was captured, in these synthetic streams


def feed(clock: StreamClock, frames: list[tuple[float, int]]) -> list[int]:
    return [clock.capture_ns(pts, arrival) for pts, arrival in frames]


def test_capture_time_is_the_stream_time_late_by_the_least_delay() -> None:
    rng = random.Random(7)
    delays = [rng.randint(3, 40) * MS for _ in range(300)]
    delays[50] = 2 * MS                                         # the least-delayed frame
    frames = [(i * 1000 / 30, T0 + round(i * 1000 / 30 * MS) + d) for i, d in enumerate(delays)]
    clock = StreamClock("cam")
    stamped = feed(clock, frames)
    truth = [T0 + round(pts * MS) for pts, _ in frames]
    errors = [s - t for s, t in zip(stamped, truth)]
    assert all(s <= arrival for s, (_, arrival) in zip(stamped, frames))     # never after the frame arrived
    assert errors[51:] == [2 * MS] * len(errors[51:])           # exact, late by the least delay seen
    assert all(0 <= e <= d for e, d in zip(errors, delays))     # before it: late by the least delay so far
    assert clock.stats.mapped == 300 and clock.stats.untimed == clock.stats.reanchors == 0


def test_decoder_bursts_do_not_bunch_capture_times() -> None:
    """Ten frames held back 1 s (a stalled reader) come out back to back: they keep their 100 ms spacing."""
    frames = [(i * 100.0, T0 + i * 100 * MS + 5 * MS) for i in range(5)]
    frames += [(i * 100.0, T0 + 1500 * MS + (i - 5) * MS) for i in range(5, 15)]
    stamped = feed(StreamClock("cam"), frames)
    assert [b - a for a, b in zip(stamped[5:], stamped[6:])] == [100 * MS] * 9


def test_drift_is_followed_within_the_window() -> None:
    """A camera clock 100 ppm slow over a minute: the offset follows it, so the error moves by at most the drift
    over one window (a fixed offset would be 6 ms off by the end)."""
    ppm = 100e-6
    frames = [(i * 1000 / 30 * (1 - ppm), T0 + round(i * 1e9 / 30) + 4 * MS) for i in range(30 * 60)]
    clock = StreamClock("cam")
    stamped = feed(clock, frames)
    truth = [T0 + round(i * 1e9 / 30) for i in range(len(frames))]
    errors = [s - t for s, t in zip(stamped, truth)]
    low, high = 4 * MS - ppm * WINDOW_NS - 0.1 * MS, 4 * MS + 0.1 * MS
    assert all(low <= e <= high for e in errors), (min(errors), max(errors))
    assert clock.stats.reanchors == 0


@pytest.mark.parametrize("pts", [None, float("nan"), float("inf"), -1.0, -33.3])
def test_unusable_pts_falls_back_to_arrival_and_counts(pts: float | None) -> None:
    clock = StreamClock("cam")
    clock.capture_ns(0.0, T0 + 10 * MS)
    assert clock.capture_ns(pts, T0 + 50 * MS) == T0 + 50 * MS
    assert clock.capture_ns(100.0, T0 + 130 * MS) == T0 + 110 * MS   # the mapping holds for the next good frame
    assert (clock.stats.mapped, clock.stats.untimed, clock.stats.reanchors) == (2, 1, 0)


@pytest.mark.parametrize("pts", [1e303, 9.3e12, float(2**63 // MS + 1)])
def test_a_pts_past_the_range_of_a_capture_time_is_untimed(pts: float) -> None:
    """A hostile stream's pts of 1e303 ms overflowed to inf as ns (OverflowError out of the capture thread); any pts
    past 2**63 ns (292 years, the wire's int64) is no time: the frame carries its arrival, counted."""
    clock = StreamClock("cam")
    clock.capture_ns(0.0, T0 + 10 * MS)
    assert clock.capture_ns(pts, T0 + 50 * MS) == T0 + 50 * MS
    assert (clock.stats.mapped, clock.stats.untimed, clock.stats.reanchors) == (1, 1, 0)


def test_capture_times_never_go_back_around_an_untimed_frame() -> None:
    """A repeated pts mid-stream is untimed (its arrival, 80 ms); the next frame maps 12 ms before that from the least
    delay (2 ms): it takes the time of the frame before it, so a camera's capture times never go back."""
    clock = StreamClock("cam")
    stamped = feed(clock, [(0.0, T0 + 2 * MS), (33.0, T0 + 73 * MS), (33.0, T0 + 80 * MS), (66.0, T0 + 106 * MS),
                           (99.0, T0 + 110 * MS)])
    assert stamped == [T0 + 2 * MS, T0 + 35 * MS, T0 + 80 * MS, T0 + 80 * MS, T0 + 101 * MS]


def test_the_window_holds_at_most_its_frames_and_frozen_pts_none() -> None:
    """The least-delay window at 1000 fps with the delay growing each frame (a slow camera clock: every frame stays a
    candidate) holds one window of frames, never more; pts that never advance add nothing."""
    clock = StreamClock("cam")
    feed(clock, [(i * 0.99, T0 + i * MS) for i in range(30_000)])
    assert len(clock._candidates) == WINDOW_NS // MS + 1
    frozen = StreamClock("cam")
    feed(frozen, [(7.0, T0 + i * MS) for i in range(30_000)])
    assert len(frozen._candidates) == 1 and frozen.stats.untimed == 30_000 - 1


def test_stream_without_timestamps_gets_arrival_times() -> None:
    """OpenCV's POS_MSEC stays 0 for a stream without pts: the first frame maps, each later one is untimed."""
    clock = StreamClock("cam")
    arrivals = [T0 + i * 33 * MS for i in range(10)]
    assert feed(clock, [(0.0, a) for a in arrivals]) == arrivals
    assert (clock.stats.mapped, clock.stats.untimed) == (1, 9)


def test_pts_going_back_reanchors() -> None:
    """A camera reboot in the session: its pts restart; the new frames map from their own arrival on."""
    clock = StreamClock("cam")
    feed(clock, [(i * 100.0, T0 + i * 100 * MS + 3 * MS) for i in range(20)])
    again = T0 + 9_000 * MS
    stamped = feed(clock, [(i * 100.0, again + i * 100 * MS + (5 - i) * MS) for i in range(5)])
    assert stamped[0] == again + 5 * MS
    assert stamped[4] == again + 400 * MS + 1 * MS
    assert clock.stats.reanchors == 1


@pytest.mark.parametrize("jump_ms", [JUMP_NS / MS + 500, -(JUMP_NS / MS + 500)])
def test_pts_jumping_off_the_mapping_reanchors(jump_ms: float) -> None:
    """pts far ahead of the arrivals (a jump), or frozen behind them (a stream that froze and went on): re-anchor."""
    clock = StreamClock("cam")
    feed(clock, [(i * 100.0, T0 + i * 100 * MS + 3 * MS) for i in range(20)])
    pts = 2_000.0 + max(jump_ms, 0)
    arrival = T0 + 2_000 * MS + 3 * MS + max(-jump_ms, 0) * MS
    assert clock.capture_ns(pts, arrival) == arrival
    assert clock.capture_ns(pts + 100, arrival + 100 * MS) == arrival + 100 * MS
    assert clock.stats.reanchors == 1


def test_a_gap_in_a_consistent_stream_is_no_discontinuity() -> None:
    """Frames lost for 5 s while pts and arrival both moved on 5 s: the mapping holds."""
    clock = StreamClock("cam")
    feed(clock, [(i * 100.0, T0 + i * 100 * MS + 3 * MS) for i in range(10)])
    assert clock.capture_ns(6_000.0, T0 + 6_000 * MS + 9 * MS) == T0 + 6_000 * MS + 3 * MS
    assert clock.stats.reanchors == 0


def test_reset_forgets_the_old_session() -> None:
    clock = StreamClock("cam")
    feed(clock, [(i * 100.0, T0 + i * 100 * MS + 3 * MS) for i in range(10)])
    clock.reset()
    assert clock.offset_ns is None
    assert clock.capture_ns(0.0, T0 + 60_000 * MS) == T0 + 60_000 * MS
    assert clock.stats.reanchors == 0


@pytest.fixture
def camera_server() -> Iterator[str]:
    from tests.conftest import free_port

    stream = rtsp.media("h264")                     # 10 fps: pts 100 ms apart
    rtsp.require(stream)
    port = free_port()
    server = rtsp.serve(port, stream)
    try:
        yield f"rtsp://127.0.0.1:{port}/live"
    finally:
        server.kill()
        server.wait()


def test_rtsp_frames_held_back_keep_the_servers_spacing(camera_server: str) -> None:
    """Frames the reader leaves in the socket for 0.6 s come out of the decoder back to back; their capture times
    keep the server's 100 ms spacing and lie up to the hold before their arrival."""
    reader = open_reader(parse_uri(camera_server))
    clock = StreamClock("cam")
    try:
        live = 0                                    # FFmpeg's probe of the stream hands its first second out at once
        while live < 3:                             # so read on until frames come at the stream's pace
            before = time.monotonic_ns()
            assert reader.read() is not None
            clock.capture_ns(reader.pts_ms, time.monotonic_ns())
            live = live + 1 if time.monotonic_ns() - before > 50 * MS else 0
        before_hold = dataclasses.replace(clock.stats)
        threading.Event().wait(0.6)                 # the stimulus: the reader stalls, the server goes on
        held = []
        for _ in range(8):
            assert reader.read() is not None
            arrival = time.monotonic_ns()
            held.append((clock.capture_ns(reader.pts_ms, arrival), arrival))
    finally:
        reader.close()
    gaps = [b[0] - a[0] for a, b in zip(held, held[1:])]
    assert all(abs(g - 100 * MS) <= 1 * MS for g in gaps), gaps
    assert held[0][1] - held[0][0] >= 400 * MS                  # stamped when sent, not when decoded
    assert all(t <= arrival for t, arrival in held)
    assert clock.stats == dataclasses.replace(before_hold, mapped=before_hold.mapped + 8)


def test_rtsp_camera_stamps_frames_from_the_stream(camera_server: str) -> None:
    camera = Camera("front", parse_uri(camera_server), on_event=lambda *_: None)
    camera.start()
    try:
        reader = camera.latest.register()
        stamps = []
        index = -1
        while len(stamps) < 6:
            frame = camera.latest.get_after(reader, index, 5.0)
            assert frame is not None, "no frame from the RTSP camera within 5 s"
            index = frame.index
            stamps.append(frame.t_capture_ns)
        wait_for(lambda: camera.clock.stats.mapped >= 6, what="frames stamped from their stream time")
    finally:
        assert camera.stop(5.0)
    assert camera.clock.stats.untimed <= 1          # OpenCV gives the first two frames POS_MSEC 0: the 2nd is untimed
    assert all(b > a for a, b in zip(stamps, stamps[1:]))


def test_only_a_stream_without_timestamps_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A session's first two frames come with POS_MSEC 0 from OpenCV (the 2nd untimed, counted, expected: no
    warning); a stream that goes on without timestamps is warned about once per camera, whatever its reconnects."""
    clock, bare = StreamClock("cam"), StreamClock("bare")
    with caplog.at_level(logging.DEBUG, logger="edge"):
        for session in range(2):
            clock.reset()
            for index, pts_ms in enumerate([0.0, 0.0, 100.0, 200.0]):
                clock.capture_ns(pts_ms, 10**9 * session * 10 + int(pts_ms * 1e6) + index * 1000)
        assert (clock.stats.untimed, caplog.messages) == (2, [])
        for session in range(2):
            bare.reset()
            for index in range(5):
                assert bare.capture_ns(0.0, 10**9 * (session * 10 + index)) == 10**9 * (session * 10 + index)
    assert bare.stats.untimed == 8
    assert caplog.messages == ["bare: frames without usable stream timestamps; they carry their arrival time as"
                               " t_capture_ns (counted, not logged again)"]


class _NoStreamTime:
    """An RTSP camera's reader whose frames have no usable stream time (pts_ms None: what the hardware readers
    give for a packet or buffer without one), its frames from the test pattern."""

    pts_ms = None

    def __init__(self, uri: object, max_frame: tuple[int, int]) -> None:
        self._pattern = open_reader(parse_uri("test://bars?size=64x48&frames=4"))
        self.fps, self.frames, self.declared_frames = 30.0, 0, 0

    def read(self) -> object:
        return self._pattern.read()

    def close(self) -> None:
        self._pattern.close()


def test_rtsp_frames_without_a_stream_time_carry_their_read_time_and_are_counted() -> None:
    camera = Camera("front", parse_uri("rtsp://127.0.0.1:1/live"), on_event=lambda *_: None, opener=_NoStreamTime)
    before = time.monotonic_ns()
    camera.start()
    try:
        wait_for(lambda: camera.clock.stats.untimed >= 4, what="4 frames counted untimed")
        frame = camera.latest.get_after(camera.latest.register(), -1, 5.0)
    finally:
        assert camera.stop(5.0)
    assert camera.clock.stats.mapped == 0 and before < frame.t_capture_ns <= time.monotonic_ns()
