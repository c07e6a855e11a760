"""A live stream's capture times on the host's CLOCK_MONOTONIC: each frame's presentation time (RTP timestamps as
FFmpeg hands them to OpenCV, in ms from the stream's start) plus an offset, the least (arrival - pts) over a sliding
window, i.e. the least-delayed frame's. Bad timestamps fall back to the arrival time or re-anchor, and are counted.
The mapping, its error and what OpenCV, FFmpeg and GStreamer expose: docs/protocol.md, "Capture time"."""
from __future__ import annotations

import collections
import dataclasses
import math

from edge.log import get_logger

log = get_logger("camera")

WINDOW_NS = 10_000_000_000      # the offset is the least delay over this much arrival time (drift: docs/protocol.md)
JUMP_NS = 1_000_000_000         # a frame this much off the mapping re-anchors it (a camera reboot, a pts jump)
MAX_PTS_NS = 2**63              # a pts past this (292 years) is no time: t_capture_ns goes out as an int64
EXPECTED_UNTIMED = 2            # OpenCV gives a session's first two frames pts 0: untimed, counted, not worth a warning


@dataclasses.dataclass
class ClockStats:
    mapped: int = 0             # frames stamped from their stream time
    untimed: int = 0            # frames stamped with their arrival: no usable pts (None, NaN, negative, past
                                # MAX_PTS_NS, not advancing)
    reanchors: int = 0          # discontinuities: pts back, or JUMP_NS off the mapping either way


def stream_ns(pts_ms: float | None) -> int | None:
    """A reader's pts (ms) as int ns; None where it is no time: None, NaN, infinite, negative or past MAX_PTS_NS."""
    if pts_ms is None or not math.isfinite(pts_ms) or not 0 <= pts_ms * 1e6 < MAX_PTS_NS:
        return None
    return round(pts_ms * 1e6)


class StreamClock:
    """Maps one stream's presentation times to CLOCK_MONOTONIC ns; `reset` when its reader reopens."""

    def __init__(self, what: str, *, window_ns: int = WINDOW_NS, jump_ns: int = JUMP_NS) -> None:
        self.what = what
        self.stats = ClockStats()
        self._window_ns = window_ns
        self._jump_ns = jump_ns
        self._candidates: collections.deque[tuple[int, int]] = collections.deque()   # (arrival, arrival - pts)
        self._last_pts_ns: int | None = None
        self._stamped_ns = 0                            # the last capture time handed out: none is earlier
        self._session_untimed = 0                       # since the last reset
        self._warned = False

    @property
    def offset_ns(self) -> int | None:
        """host = pts + offset_ns, from the least-delayed frame in the window; None before the first timed frame."""
        return self._candidates[0][1] if self._candidates else None

    def reset(self) -> None:
        """A new session (the reader reopened): its pts start afresh, so nothing from the old one holds."""
        self._candidates.clear()
        self._last_pts_ns = None
        self._session_untimed = 0

    def capture_ns(self, pts_ms: float | None, arrival_ns: int) -> int:
        """The capture time of a frame whose stream time is `pts_ms` and which the reader returned at `arrival_ns`;
        never later than `arrival_ns`, never earlier than the frame before's."""
        pts_ns = stream_ns(pts_ms)
        if pts_ns is None:
            return self._untimed(arrival_ns)
        if self._last_pts_ns is not None and pts_ns == self._last_pts_ns:
            return self._untimed(arrival_ns)            # OpenCV's POS_MSEC stays 0 for a stream without pts
        candidate = arrival_ns - pts_ns
        offset = self.offset_ns
        if offset is not None:
            if pts_ns < self._last_pts_ns:
                self._reanchor(f"its timestamps went back {(self._last_pts_ns - pts_ns) / 1e6:.0f} ms")
            elif abs(candidate - offset) > self._jump_ns:
                self._reanchor(f"a frame came {(candidate - offset) / 1e6:+.0f} ms off its timestamps")
        self._last_pts_ns = pts_ns
        window = self._candidates
        while window and window[-1][1] >= candidate:        # a monotonic deque: its head is the window's minimum
            window.pop()
        window.append((arrival_ns, candidate))
        while window[0][0] < arrival_ns - self._window_ns:
            window.popleft()
        self.stats.mapped += 1
        self._stamped_ns = max(pts_ns + window[0][1], self._stamped_ns)    # after an untimed frame's arrival
        return self._stamped_ns

    def _untimed(self, arrival_ns: int) -> int:
        self.stats.untimed += 1
        self._session_untimed += 1
        if self._session_untimed == EXPECTED_UNTIMED + 1 and not self._warned:
            self._warned = True
            log.warning("%s: frames without usable stream timestamps; they carry their arrival time as t_capture_ns"
                        " (counted, not logged again)", self.what)
        self._stamped_ns = max(arrival_ns, self._stamped_ns)
        return self._stamped_ns

    def _reanchor(self, why: str) -> None:
        self.stats.reanchors += 1
        report = log.info if self.stats.reanchors == 1 else log.debug
        report("%s: %s; capture times re-anchored on this frame's arrival (%d re-anchors so far)", self.what, why,
               self.stats.reanchors)
        self._candidates.clear()
