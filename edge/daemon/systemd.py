"""The systemd notification protocol (sd_notify(3)), spoken directly: one datagram of newline-separated
KEY=VALUE lines to the AF_UNIX socket in $NOTIFY_SOCKET (a path, or an abstract name written `@name`).
Without $NOTIFY_SOCKET (not started by systemd) every call does nothing.

The watchdog interval comes from $WATCHDOG_USEC (set by systemd with WatchdogSec=); the service pings at
half of it, and only while no lane is stalled (`Stalls`), never from a free-running timer.
While starting, more start time is asked for only after real progress (`progress`), so TimeoutStartSec still
ends a start that hangs.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from edge.log import get_logger

log = get_logger("systemd")
EXTEND_BY_S = 60.0              # after each step of a start (an engine loaded, a plan build phase): this long from now
START_CAP_S = 1800.0            # a start is never extended past this (plan builds on a small Orin take many minutes)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._warned = False
        self._born = time.monotonic()
        self._starting = True            # progress extends the start until READY=1
        self._capped = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one notification, e.g. send(READY=1, STATUS="..."); False when there is no systemd to tell."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            if not self._warned:               # systemd gone or the socket unusable: say it once, run on
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@", 1), exc.strerror)
            return False
        return True

    def ready(self, status: str) -> None:
        self._starting = False
        self.send(READY=1, STATUS=status)

    def progress(self, status: str) -> None:
        """A step of the start made progress: EXTEND_TIMEOUT_USEC for EXTEND_BY_S from now, with `status`. Not
        after READY=1 (systemd extends its watchdog deadline with it too: sd_notify(3), service.c
        service_extend_timeout), and not once the start has run START_CAP_S."""
        if not self._starting or self.address is None:
            return
        if time.monotonic() - self._born > START_CAP_S:
            if not self._capped:
                self._capped = True
                log.warning("the start has run for over %.0f min: no more start time is asked of systemd, so"
                            " TimeoutStartSec ends it if it does not finish", START_CAP_S / 60)
            self.send(STATUS=status)
            return
        self.send(EXTEND_TIMEOUT_USEC=int(EXTEND_BY_S * 1e6), STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def reloading(self, status: str) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd asks for; READY=1 (`ready`) ends the reload."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000, STATUS=status)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]                 # abstract namespace
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name (@...); not notifying systemd", value)
    return None


def _one_line(text: str) -> str:
    return text.replace("\n", " ")


class Stalls:
    """Which lanes are stalled: a lane that has had frames in flight (captured and not skipped by its rate limit,
    more than it processed) and finished none for a whole watchdog interval, and has not ended. A lane merely
    without frames is not stalled. Logs each lane once when it becomes stalled."""

    def __init__(self) -> None:
        self._progress: dict[str, tuple[int, int, float]] = {}   # lane -> (submitted, processed, since)
        self._stalled: set[str] = set()

    def check(self, lanes: Iterable[Any], now: float, interval_s: float) -> list[str]:
        """The stalled lanes among `lanes` (each with .name, .stats and .finished) at `now`, in their order."""
        stalled = []
        for lane in lanes:
            submitted = lane.stats.captured - lane.stats.skipped_rate
            counts = (submitted, lane.stats.processed)
            before = self._progress.get(lane.name)
            if before is None or before[:2] != counts:
                self._progress[lane.name] = (*counts, now)
            elif submitted > lane.stats.processed and now - before[2] >= interval_s and not lane.finished.is_set():
                stalled.append(lane.name)
        for name in [name for name in stalled if name not in self._stalled]:
            log.error("lane %s has finished no frame for %.0f s with frames in flight; not pinging the systemd"
                      " watchdog, so systemd restarts the daemon", name, now - self._progress[name][2])
        self._stalled = set(stalled)
        return stalled
