"""The supervisor at work: a thread that reads telemetry, asks the policy (edge/supervisor/policy.py, pure) and
applies its decisions to the task runtimes: the precision (a switch at the next frame boundary), the
rate scale and the pause. It publishes each sample on `sys.telemetry`, level changes and telemetry
problems on `sys.event`, and keeps the last state for status and heartbeats.

The policy is not thread-safe; everything that touches it (this thread, and the control socket's
`precision.set`, `task.enable`, `task.disable`) holds the supervisor's lock, briefly: a variant a decision
needs loaded (`preload: active`) is loaded after the lock is let go, and the decision is then made again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.config.supervisor import SupervisorSection
from edge.errors import EdgeError
from edge.log import get_logger
from edge.supervisor.policy import Decision, Level, Policy, TaskPolicy, Update, check_pin
from edge.supervisor.telemetry import open_reader
from edge.supervisor.telemetry.common import NoneReader, Reader, Sample, TelemetryError
from edge.wire import protocol

if TYPE_CHECKING:
    from edge.pipeline.runtime import TaskRuntime

log = get_logger("supervisor")
HARDWARE_SOURCES = ("jtop", "sysfs", "nvml")      # may be down at start: the daemon runs on without them
Publish = Callable[[str, dict[str, Any]], Any]
Loads = list[tuple["TaskRuntime", str]]                 # variants the decisions need loaded: (task, precision)


def open_telemetry(uri: str, on_event: Callable[[str, dict[str, Any]], None]) -> Reader:
    """The configured reader. A hardware source that cannot be opened now (the jtop service down, no
    sysfs zones) is reported and replaced by `none`, so the daemon keeps perceiving; a bad URI or a
    broken trace file fails the start like any other bad input."""
    try:
        return open_reader(uri)
    except TelemetryError as exc:
        if uri.partition("://")[0] not in HARDWARE_SOURCES:
            raise
        log.error("telemetry %s cannot be read, so the supervisor holds NORMAL: %s", uri, exc)
        on_event("telemetry.problem", {"source": uri, "reason": exc.what})
        return NoneReader()


def _task_reason(update: Update, decision: Decision) -> str:
    """Why a task runs as it does now, for status: the level and the task's own part of the decision (precision,
    rate, pause), e.g. "HOT: int8". The policy's reason for a task repeats the level's (held, why entered), which
    status shows once, in its supervisor line; the whole of it goes with the precision.switch event."""
    return f"{update.level.name}: {decision.reason.removeprefix(update.reason + ': ')}"


def policy_of(runtime: TaskRuntime) -> TaskPolicy:
    """What the policy needs of a task, as its runtime has it now. The refusals are read before the available
    variants: a load on another thread may refuse one in between, and a variant is never both."""
    refused = dict(runtime.unavailable)
    return TaskPolicy(runtime.name, frozenset(runtime.available()), runtime.mode, runtime.config.priority, refused)


class Supervisor:
    """Runs the policy for the running tasks and applies its decisions. A task's mode and variants are its
    runtime's alone (precision.set sets the runtime's mode, a variant that fails to load is refused in the
    runtime): the policy is given them as they are at each decision, so nothing is kept twice."""

    def __init__(self, section: SupervisorSection, reader: Reader, publish: Publish,
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.section = section
        self.reader = reader
        self.publish = publish
        self.on_event = on_event
        self.policy = Policy(section.policy())
        self.last: Update | None = None
        self.sample: Sample | None = None
        self._runtimes: dict[str, TaskRuntime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._problems: tuple[str, ...] = ()

    def add(self, runtime: TaskRuntime) -> None:
        with self._lock:
            self._runtimes[runtime.name] = runtime
            loads = self._apply(self.policy.decide(self._tasks()))
        self._load(loads)

    def remove(self, name: str) -> None:
        with self._lock:
            self._runtimes.pop(name, None)

    def set_mode(self, name: str, mode: str) -> None:
        """`precision.set`: pin the task to `mode`, or give it back to the ladder with `auto`."""
        with self._lock:
            runtime = self._runtimes.get(name)
            if runtime is None:
                raise EdgeError(f"task {name} is not running", note=f"running: {', '.join(self._runtimes) or 'none'}")
            check_pin(policy_of(runtime), mode)
            runtime.mode = mode
            loads = self._apply(self.policy.decide(self._tasks()))
        self._load(loads)

    def reconfigure(self, section: SupervisorSection) -> None:
        """New thresholds and interval from a reload (the same telemetry source): the level and its timers carry
        on, and the next sample is judged by the new thresholds."""
        with self._lock:
            self.section = section
            self.policy.config = section.policy()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("supervisor thread did not stop within %.1f s", timeout)
                return
        self.reader.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.section.interval_s)

    def step(self) -> None:
        """One round: read, decide, apply, report. A failing reader is reported, never fatal."""
        try:
            sample = self.reader.read()
        except Exception as exc:  # a reader bug must not end the supervision; the policy then holds its level
            log.exception("telemetry %s failed", self.reader.name)
            sample = Sample(t=self.sample.t if self.sample else 0.0, source=self.reader.name,
                            problems=(f"{self.reader.name} failed: {exc!r}",))
        with self._lock:
            update = self.policy.update(sample, self._tasks())
            self.sample = sample
            loads = self._apply(update)
        self.publish("sys.telemetry", protocol.telemetry_message(
            source=sample.source, temps_c=sample.temps_c, power_mw=sample.power_mw, total_mw=sample.total_mw,
            mode=sample.mode, gpu_load=sample.gpu_load, problems=sample.problems))
        if sample.problems != self._problems:
            self._problems = sample.problems
            if sample.problems:
                self.on_event("telemetry.problem", {"source": sample.source, "reason": "; ".join(sample.problems)})
        self._load(loads)

    def _apply(self, update: Update) -> Loads:
        """Hand the decisions to the runtimes: the rate at once, the precision at their lanes' next frame. A
        precision whose variant is not loaded yet is returned instead, for `_load` (the lock is held here)."""
        if update.level_changed:
            log.log(logging.WARNING if update.level > Level.NORMAL else logging.INFO, "supervisor: %s: %s",
                    update.level.name, update.reason)
            self.on_event("supervisor.level", {"level": update.level.name, "reason": update.reason})
        loads: Loads = []
        for name, decision in update.decisions.items():
            runtime = self._runtimes.get(name)
            if runtime is None:
                continue
            runtime.rate_scale = 0.0 if decision.paused else decision.rate_scale
            if runtime.needs_load(decision.precision):
                loads.append((runtime, decision.precision))
            else:
                runtime.choose(decision.precision, _task_reason(update, decision), cause=decision.reason)
        self.last = update
        return loads

    def _load(self, loads: Loads) -> None:
        """Load (and warm up) the variants the decisions chose, without the lock, so precision.set, status and the
        other tasks do not wait for them; then decide again, as a pin, a refused variant or a disabled task may
        have changed the decision meanwhile. Each round loads or refuses a variant, so it ends."""
        while loads:
            for runtime, precision in loads:
                runtime.load_variant(precision)
            with self._lock:
                loads = self._apply(self.policy.decide(self._tasks()))

    def _tasks(self) -> list[TaskPolicy]:
        """The running tasks as their runtimes have them now: a variant refused since is not offered again."""
        return [policy_of(runtime) for runtime in self._runtimes.values()]

    def status(self) -> dict[str, Any] | None:
        update = self.last
        if update is None:
            return None
        return {"level": update.level.name, "reason": update.reason, "pending": update.pending, "zone": update.zone,
                "temp_c": update.temp_c, "total_mw": update.total_mw, "critical_c": update.critical_c}

    def telemetry(self) -> dict[str, Any] | None:
        sample = self.sample
        if sample is None:
            return None
        return {"source": sample.source, "temps_c": sample.temps_c, "power_mw": sample.power_mw,
                "total_mw": sample.total_mw, "mode": sample.mode, "gpu_load": sample.gpu_load,
                "problems": list(sample.problems)}
