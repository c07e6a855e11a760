"""Is the running daemon healthy? Asked through its control socket (`status`, docs/protocol.md) until a deadline.

Healthy: the daemon answers (after a restart, a daemon that started after it), runs at least one task with a
lane each, and every lane is running and has processed frames since the first answer. A lane that has stopped
fails at once; a lane without frames fails at the deadline, named with its counters (captured, processed),
which tell a camera without frames from an engine that does not finish them. docs/operations.md, "What an
install does", step 6.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from edge.deploy.common import BundleError
from edge.errors import EdgeError
from edge.wire import control


class HealthError(BundleError):
    """The daemon did not show itself healthy within the timeout."""


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    endpoint: str
    timeout_s: float = 60.0
    interval_s: float = 0.5
    started_after: float | None = None      # time.monotonic() of the restart; the daemon must be younger


def check(hc: HealthCheck) -> str:
    """A one-line summary when the daemon is healthy; HealthError with the last problem seen otherwise."""
    start = time.monotonic()
    deadline = start + hc.timeout_s
    progress = _Progress()
    problem = "no answer yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HealthError(f"the daemon was not healthy within {hc.timeout_s:g} s: {problem}",
                              note=f"asked on {hc.endpoint}",
                              hint="see `edge status` and `journalctl -u edge-runtime`; a slow first start (plans"
                                   " built on the board) needs a longer --health-timeout")
        try:
            status = control.request(hc.endpoint, "status", timeout_s=round(max(0.1, min(remaining, 5.0)), 1))
        except EdgeError as exc:
            problem = f"no status reply ({exc.what})"
        else:
            problem = _assess(status, progress, hc.started_after)
            if problem is None:
                return progress.summary(status, time.monotonic() - start)
        time.sleep(max(0.0, min(hc.interval_s, deadline - time.monotonic())))


class _Progress:
    """Each lane's processed count at the first answer, and the lanes that have gone past it since."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        self.latest: dict[str, int] = {}

    def update(self, lanes: dict[str, int]) -> list[str]:
        """The lanes that have not made progress yet."""
        for name, processed in lanes.items():
            self.first.setdefault(name, processed)
            self.latest[name] = processed
        return [name for name in lanes if self.latest[name] <= self.first[name]]

    def summary(self, status: dict[str, Any], seconds: float) -> str:
        tasks = ", ".join(f"{t['task']} {t.get('precision')}" for t in status["tasks"])
        lanes = ", ".join(f"{name} +{self.latest[name] - self.first[name]}" for name in sorted(self.latest))
        unavailable = "; ".join(f"{t['task']} {p}: {why}" for t in status["tasks"]
                                for p, why in (t.get("unavailable") or {}).items())
        return (f"healthy after {seconds:.1f} s: tasks {tasks}; frames processed: {lanes}"
                + (f"; unavailable: {unavailable}" if unavailable else ""))


def _assess(status: dict[str, Any], progress: _Progress, started_after: float | None) -> str | None:
    """What keeps `status` from being healthy (None when nothing); HealthError for a lane that has stopped."""
    try:
        tasks = {str(t["task"]) for t in status["tasks"]}
        lanes = {f"{lane['task']}/{lane['camera']}": lane for lane in status["lanes"]}
        uptime = float(status["uptime_s"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed status reply ({exc!r:.100})"
    if started_after is not None and uptime > time.monotonic() - started_after:
        return f"the daemon answering has run for {uptime:.1f} s: it started before the restart"
    if not tasks:
        return "the daemon runs no task"
    idle = sorted(tasks - {str(lane["task"]) for lane in lanes.values()})
    if idle:
        return f"task(s) {', '.join(idle)} have no lane"
    stopped = [f"{name} (captured {lane.get('captured')}, processed {lane.get('processed')})"
               for name, lane in lanes.items() if not lane.get("running", False)]
    if stopped:
        raise HealthError(f"the daemon's lane(s) stopped: {', '.join(stopped)}",
                          hint="see `edge status` and `journalctl -u edge-runtime`")
    try:
        waiting = progress.update({name: int(lane["processed"]) for name, lane in lanes.items()})
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed lane in the status reply ({exc!r:.100})"
    if waiting:
        return "no frame processed since the first answer by " + ", ".join(
            f"{name} (captured {lanes[name].get('captured')}, processed {lanes[name].get('processed')})"
            for name in waiting)
    return None
