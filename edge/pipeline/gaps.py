"""Frames a live stream skipped, seen in its presentation times: on a steady stream (its recent frame steps agree),
a step over 1.5 frame intervals means frames that never came (RTP packets lost on UDP: a frame whose packets were
all lost, or that the decoder dropped until the next key frame). What this sees and what it cannot (damage FFmpeg
conceals, its process-wide log): docs/reliability.md, "Packet loss"."""
from __future__ import annotations

import collections
import statistics

from edge.config.cameras import FPS_RANGE
from edge.log import get_logger
from edge.pipeline.clock import stream_ns

log = get_logger("camera")

WINDOW = 15                 # the frame interval is the median of this many recent steps
MIN_STEPS = 8               # steps seen before a gap counts
GAP_FACTOR = 1.5            # a step over this many frame intervals skipped frames
STEADY_SHARE = 0.75         # steady: the window's lower quartile step is at least this share of its median
MIN_INTERVAL_MS = 1000 / FPS_RANGE[1]     # a faster "frame rate" is no camera's (a hostile clock rate): not counted


class FrameGaps:
    """Counts the frames one stream skipped from each frame's pts (ms); `reset` when its reader reopens. A gap
    counts once a step of the old interval follows it: a stream that changed its rate goes on with long steps
    until the window's median moves, and those are dropped, not counted."""

    def __init__(self, what: str, max_gap_ms: float) -> None:
        self.what = what
        self._max_gap_ms = max_gap_ms       # a longer step is a discontinuity (a stall, a pts jump), not loss
        self._steps: collections.deque[float] = collections.deque(maxlen=WINDOW)
        # (step, interval): gaps waiting for a step on time; the window's median follows long steps, so few wait
        self._pending: collections.deque[tuple[float, float]] = collections.deque(maxlen=WINDOW)
        self._last: float | None = None
        self._reported = 0

    def reset(self) -> None:
        """A new session: its pts start afresh, and its rate may differ."""
        self._steps.clear()
        self._pending.clear()
        self._last = None

    def interval_ms(self) -> float | None:
        """The stream's frame interval: the median recent step, once enough steps agree; None before that."""
        if len(self._steps) < MIN_STEPS:
            return None
        steps = sorted(self._steps)
        median = statistics.median(steps)
        steady = steps[len(steps) // 4] >= STEADY_SHARE * median
        return median if steady and median >= MIN_INTERVAL_MS else None

    def lost(self, pts_ms: float | None) -> tuple[int, int]:
        """(gaps, frames) the stream is now known to have skipped, given the next frame's `pts_ms`: both 0 for an
        untimed frame, a discontinuity (pts back, a step over the largest gap), and until a gap is confirmed."""
        if not stream_ns(pts_ms):           # no time (edge/pipeline/clock.py), or 0: a session's first frames
            return 0, 0
        last, self._last = self._last, pts_ms
        if last is None or pts_ms <= last:
            return 0, 0
        step = pts_ms - last
        if step > self._max_gap_ms:
            self._pending.clear()
            return 0, 0
        interval = self.interval_ms()
        self._steps.append(step)
        if interval is None:
            self._pending.clear()
        elif step > GAP_FACTOR * interval:
            self._pending.append((step, interval))
        elif self._pending:
            confirmed = list(self._pending)
            self._pending.clear()
            return len(confirmed), sum(self._skipped(gap, at) for gap, at in confirmed)
        return 0, 0

    def _skipped(self, step: float, interval: float) -> int:
        skipped = max(1, round(step / interval) - 1)
        self._reported += 1
        report = log.warning if self._reported == 1 else log.debug
        report("%s: the stream skipped %d frame(s): its timestamps stepped %.0f ms at a %.0f ms frame interval"
               " (packets lost on the way, e.g. with transport=udp; counted in lost_frames, further gaps logged"
               " at debug)", self.what, skipped, step, interval)
        return skipped
