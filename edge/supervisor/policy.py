"""The supervisor's policy: telemetry samples in, a precision, rate and pause per task out, each with the reason.
Pure and deterministic (no threads, no I/O, time is the sample's), so a trace gives the same decisions every run;
edge/supervisor/loop.py runs it, and docs/supervisor.md explains the ladder, the reasons and the defaults.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from edge.config.precision import MODES, PRECISIONS, PREFERENCE
from edge.config.supervisor import DEFAULT_PASSIVE_TRIP_C, SupervisorConfig, config_error, is_finite_number
from edge.errors import ConfigError, UsageError
from edge.supervisor.telemetry.common import Sample, plausible_c

_SOC_ZONE = re.compile(r"(cpu|gpu|soc|cv|tj)\d*")


class Level(enum.IntEnum):
    NORMAL = 0
    HOT = 1
    CRITICAL = 2


@dataclasses.dataclass(frozen=True)
class TaskPolicy:
    """What the policy knows of one task: its mode, its priority and its variants.

    available: the precisions loaded (or loadable) for this task. refused: precision -> why its variant
    was refused (e.g. {"int8": "agreement 0.91 < 0.95"}); a refused precision is not available.
    """

    name: str
    available: frozenset[str]
    precision: str = "auto"
    priority: int = 50
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "available", frozenset(self.available))
        object.__setattr__(self, "refused", MappingProxyType(dict(self.refused)))
        _check_task(self)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One task's orders: run `precision` at `rate_scale` of its rate (0 when paused), and why."""

    precision: str
    rate_scale: float
    paused: bool
    reason: str

    def same_action(self, other: Decision | None) -> bool:
        return other is not None and (self.precision, self.rate_scale, self.paused) == (
            other.precision, other.rate_scale, other.paused)


@dataclasses.dataclass(frozen=True)
class Update:
    """The state after a sample: the level, why, the reading, and a decision per task.

    changed: tasks whose precision, rate or pause differ from the previous Update returned (new tasks
    included), in name order; what the service must apply and announce.
    """

    t: float | None
    level: Level
    pausing: bool
    reason: str
    reading: str
    pending: str
    zone: str | None
    temp_c: float | None
    total_mw: float | None
    critical_c: float | None
    decisions: Mapping[str, Decision]
    changed: tuple[str, ...]
    level_changed: bool


@dataclasses.dataclass(frozen=True)
class _Reading:
    t: float
    label: str                      # the zone as reasons name it
    fallback: str                   # why another zone than the configured one, or ""
    zone: str | None
    temp_c: float | None
    why_none: str                   # when temp_c is None: why
    total_mw: float | None
    critical_c: float
    critical_note: str              # how critical_c was set, for reasons


class Policy:
    """The policy's state: the level, its timers and the decisions last reported. The tasks are not its own: each
    call is given them as they are now (the task runtimes own their modes and variants). Not thread-safe: one
    owner calls it."""

    def __init__(self, config: SupervisorConfig | None = None) -> None:
        self.config = config or SupervisorConfig()
        self._level = Level.NORMAL
        self._level_since: float | None = None
        self._level_reason = "start: no sample yet"
        self._pausing = False
        self._runs: dict[str, float | None] = dict.fromkeys(_RUNS)
        self._reading: _Reading | None = None
        self._reported: dict[str, Decision] = {}
        self._reported_level = Level.NORMAL

    @property
    def level(self) -> Level:
        return self._level

    def update(self, sample: Sample, tasks: Iterable[TaskPolicy]) -> Update:
        """Take one sample: advance the timers, step the level if due, and decide for each of `tasks`."""
        named = _by_name(tasks)
        reading = _read(sample, self.config)
        if self._reading is not None and reading.t < self._reading.t:
            self._restart(reading.t)
        if self._level_since is None:
            self._level_since = reading.t
            # without a temperature the hold note already says why: the reason says it once
            self._level_reason = f"start at {_at(reading)}" if reading.temp_c is not None else "since the start"
        self._reading = reading
        self._track(reading)
        self._step(reading)
        return self._decide(named)

    def decide(self, tasks: Iterable[TaskPolicy]) -> Update:
        """The decisions for `tasks` in the current state, without a new sample (after a task was pinned, enabled,
        disabled, or refused a variant)."""
        return self._decide(_by_name(tasks))

    def _decide(self, tasks: dict[str, TaskPolicy]) -> Update:
        hold = self._hold_note()
        prefix = f"{hold}; " if hold else ""
        decisions = {name: self._decision(task, prefix) for name, task in sorted(tasks.items())}
        changed = tuple(n for n, d in decisions.items() if not d.same_action(self._reported.get(n)))
        update = self._report(prefix, decisions, changed)
        self._reported = decisions
        self._reported_level = self._level
        return update

    def _restart(self, t: float) -> None:
        self._runs = dict.fromkeys(_RUNS)
        self._level_since = t

    def _track(self, r: _Reading) -> None:
        """Start or break each run of readings (the time it started, None when broken)."""
        for name, holds in _conditions(r, self.config).items():
            self._runs[name] = (self._runs[name] if self._runs[name] is not None else r.t) if holds else None

    def _held(self, run: str, t: float, *, since_level: bool) -> float | None:
        start = self._runs[run]
        if start is None:
            return None
        return t - (max(start, self._level_since) if since_level else start)

    def _step(self, r: _Reading) -> None:
        cfg = self.config
        crit = self._held("critical", r.t, since_level=False)
        hot = self._held("hot", r.t, since_level=False)
        if self._level < Level.CRITICAL and crit is not None and crit >= cfg.confirm_s:
            self._enter(Level.CRITICAL, r.t, _critical_text(r, crit))
        elif self._level < Level.HOT and hot is not None and hot >= cfg.confirm_s:
            self._enter(Level.HOT, r.t, _hot_text(r, cfg, hot))
        else:
            self._step_down(r)
        self._maybe_pause(r)

    def _step_down(self, r: _Reading) -> None:
        if self._level == Level.NORMAL:
            return
        run = "below_release" if self._level == Level.CRITICAL else "below_cool"
        held = self._held(run, r.t, since_level=True)
        if held is None or held < self.config.dwell_s:
            return
        if self._level == Level.CRITICAL:
            self._enter(Level.HOT, r.t, _release_text(r, self.config, held))
        else:
            self._enter(Level.NORMAL, r.t, _cool_text(r, self.config, held))

    def _maybe_pause(self, r: _Reading) -> None:
        cfg = self.config
        held = self._held("critical", r.t, since_level=True)
        if self._level != Level.CRITICAL or self._pausing or held is None or held < cfg.pause_after_s:
            return
        self._pausing = True
        self._level_reason = (f"{_at(r)} ≥ critical {r.critical_c:.1f} °C for {held:.1f} s "
                              f"at rate ×{cfg.critical_rate_scale:g}: pausing priority < {cfg.pause_below_priority}")

    def _enter(self, level: Level, t: float, reason: str) -> None:
        self._level, self._level_since, self._level_reason = level, t, reason
        self._pausing = False

    def _hold_note(self) -> str:
        r = self._reading
        if r is None:
            return ""
        if r.temp_c is None:
            return f"no usable temperature ({r.why_none}): holding {self._level.name}"
        resume = self.config.resume_mw
        if self._level == Level.HOT and resume is not None and r.total_mw is None and r.temp_c < self.config.cool_c:
            return "power unknown with a budget set: holding HOT"
        return ""

    def _decision(self, task: TaskPolicy, prefix: str) -> Decision:
        precision, note = _precision(task, self._level)
        cfg = self.config
        if self._level < Level.CRITICAL:
            return Decision(precision, 1.0, False, f"{prefix}{self._level_reason}: {note}")
        if self._pausing and task.priority < cfg.pause_below_priority:
            why = f"paused (priority {task.priority} < {cfg.pause_below_priority})"
            return Decision(precision, 0.0, True, f"{prefix}{self._level_reason}: {note}, {why}")
        scale = cfg.critical_rate_scale
        return Decision(precision, scale, False, f"{prefix}{self._level_reason}: {note}, rate ×{scale:g}")

    def _report(self, prefix: str, decisions: dict[str, Decision], changed: tuple[str, ...]) -> Update:
        r = self._reading
        return Update(t=r.t if r else None, level=self._level, pausing=self._pausing,
                      reason=f"{prefix}{self._level_reason}", reading=_reading_text(r), pending=self._pending(),
                      zone=r.zone if r else None, temp_c=r.temp_c if r else None,
                      total_mw=r.total_mw if r else None, critical_c=r.critical_c if r else None,
                      decisions=MappingProxyType(decisions), changed=changed,
                      level_changed=self._level != self._reported_level)

    def _pending(self) -> str:
        """The step the timers are counting towards, e.g. "HOT -> NORMAL: 12.0 of 30.0 s"."""
        r, cfg = self._reading, self.config
        if r is None:
            return ""
        for run, level, wait in (("critical", Level.CRITICAL, cfg.confirm_s), ("hot", Level.HOT, cfg.confirm_s)):
            held = self._held(run, r.t, since_level=False)
            if self._level < level and held is not None:
                return f"{self._level.name} -> {level.name}: {held:.1f} of {wait:.1f} s"
        if self._level > Level.NORMAL:
            held = self._held("below_release" if self._level == Level.CRITICAL else "below_cool", r.t, since_level=True)
            if held is not None:
                return f"{self._level.name} -> {Level(self._level - 1).name}: {held:.1f} of {cfg.dwell_s:.1f} s"
        return ""



def check_pin(task: TaskPolicy, mode: str) -> None:
    """`precision.set`: `mode` is `auto` or a precision `task` can run; ConfigError says why not."""
    if mode not in MODES:
        raise ConfigError(f"supervisor: precision {mode!r} for task {task.name!r} is not one of {', '.join(MODES)}",
                          hint="use auto to follow the ladder, or pin fp16, int8 or fp32")
    if mode != "auto" and mode not in task.available:
        raise ConfigError(f"supervisor: task {task.name!r} cannot be pinned to {mode}: {_missing(task, mode)}",
                          note=f"available: {', '.join(sorted(task.available))}",
                          hint="pin an available precision, or build and load that variant first")


def _by_name(tasks: Iterable[TaskPolicy]) -> dict[str, TaskPolicy]:
    named: dict[str, TaskPolicy] = {}
    for task in tasks:
        if task.name in named:
            raise UsageError(f"supervisor: task {task.name!r} is given twice",
                             note=f"tasks: {', '.join(t.name for t in named.values())}, {task.name}",
                             hint="give each task once, as its runtime has it now")
        named[task.name] = task
    return named

_RUNS = ("hot", "critical", "below_release", "below_cool")


def _conditions(r: _Reading, cfg: SupervisorConfig) -> dict[str, bool]:
    """Which runs this reading continues. An unknown value continues none (so it never steps down)."""
    t, p = r.temp_c, r.total_mw
    over_budget = cfg.power_budget_mw is not None and p is not None and p >= cfg.power_budget_mw
    resume = cfg.resume_mw
    power_calm = resume is None or (p is not None and p < resume)
    return {
        "hot": over_budget or (t is not None and t >= cfg.hot_c),
        "critical": t is not None and t >= r.critical_c,
        "below_release": t is not None and t < r.critical_c - cfg.critical_hysteresis_c,
        "below_cool": t is not None and t < cfg.cool_c and power_calm,
    }


# ---- reading a sample ----

def _zone_key(name: str) -> str:
    """cpu-thermal, CPU and cpu@thermal_zone3 (a second zone of that name, as the sysfs reader names it) -> cpu."""
    return name.partition("@")[0].lower().removesuffix("-thermal")


def _read(sample: Sample, cfg: SupervisorConfig) -> _Reading:
    if not isinstance(sample.t, (int, float)) or not math.isfinite(sample.t):
        raise UsageError(f"supervisor: sample time {sample.t!r} is not a finite number of seconds",
                         note=f"source {sample.source}", hint="telemetry readers stamp samples with time.monotonic()")
    zone, temp, fallback, why = _temperature(sample, cfg.zone)
    critical_c, critical_note = _critical(sample, cfg, zone)
    total = sample.total_mw
    power = float(total) if is_finite_number(total) and total >= 0 else None
    return _Reading(float(sample.t), zone or cfg.zone or "soc", fallback, zone, temp, why, power, critical_c,
                    critical_note)


def _temperature(sample: Sample, wanted: str | None) -> tuple[str | None, float | None, str, str]:
    """(zone, °C, fallback note, why none) of the configured zone, else of the hottest SoC zone."""
    soc = {z: float(c) for z, c in sample.temps_c.items() if _SOC_ZONE.fullmatch(_zone_key(z)) and plausible_c(c)}
    fallback = ""
    if wanted is not None:
        found = [z for z in sample.temps_c if _zone_key(z) == _zone_key(wanted)]
        if found and plausible_c(sample.temps_c[found[0]]):
            return found[0], float(sample.temps_c[found[0]]), "", ""
        fallback = f" (zone {wanted} {_unreadable(sample, found)}: hottest SoC zone)"
    if soc:
        zone = max(soc, key=soc.__getitem__)
        return zone, soc[zone], fallback, ""
    return None, None, "", _why_none(sample, wanted)


def _unreadable(sample: Sample, found: list[str]) -> str:
    return f"reads {sample.temps_c[found[0]]!r} °C" if found else "missing"


def _why_none(sample: Sample, wanted: str | None) -> str:
    if sample.source == "none":
        return "telemetry source none"
    if not sample.temps_c:
        parts = ["no zone read"]
    else:
        shown = ", ".join(f"{z} {c!r}" for z, c in sorted(sample.temps_c.items())[:4])
        parts = [f"no usable {'zone ' + wanted + ' or ' if wanted else ''}SoC zone among {shown}"]
    parts += list(sample.problems[:2]) + ([f"+{len(sample.problems) - 2} more"] if len(sample.problems) > 2 else [])
    return "; ".join(parts)


def _critical(sample: Sample, cfg: SupervisorConfig, zone: str | None) -> tuple[float, str]:
    """critical_c and how it was set: configured, else the lowest passive trip of the watched zones - margin."""
    if cfg.critical_c is not None:
        return cfg.critical_c, ""
    watched = ({_zone_key(cfg.zone)} | ({_zone_key(zone)} if zone else set())) if cfg.zone else None
    trips = [float(kinds["passive"]) for z, kinds in sample.trips_c.items()
             if (_zone_key(z) in watched if watched else _SOC_ZONE.fullmatch(_zone_key(z)))
             and plausible_c(kinds.get("passive"))]
    passive = min(trips) if trips else DEFAULT_PASSIVE_TRIP_C
    source = "passive trip" if trips else "default passive trip"
    derived = passive - cfg.critical_margin_c
    note = f"{source} {passive:.1f} °C − {cfg.critical_margin_c:.1f} °C"
    if derived <= cfg.hot_c:
        return cfg.hot_c, f"{note} = {derived:.1f} °C, not above hot: raised to hot"
    return derived, note


# ---- reasons (every one carries the numbers that caused it) ----

def _at(r: _Reading) -> str:
    """The temperature as reasons name it, e.g. "tj 87.5 °C"."""
    return f"{r.label} {r.temp_c:.1f} °C{r.fallback}"


def _temp_text(r: _Reading) -> str:
    return _at(r) if r.temp_c is not None else f"no usable temperature ({r.why_none})"


def _reading_text(r: _Reading | None) -> str:
    if r is None:
        return "no sample yet"
    power = f"{r.total_mw:.0f} mW" if r.total_mw is not None else "power unknown"
    return f"{_temp_text(r)}, {power}, critical {r.critical_c:.1f} °C"


def _hot_text(r: _Reading, cfg: SupervisorConfig, held: float) -> str:
    causes = []
    if r.temp_c is not None and r.temp_c >= cfg.hot_c:
        causes.append(f"{_at(r)} ≥ hot {cfg.hot_c:.1f} °C")
    if cfg.power_budget_mw is not None and r.total_mw is not None and r.total_mw >= cfg.power_budget_mw:
        causes.append(f"power {r.total_mw:.0f} mW ≥ budget {cfg.power_budget_mw:.0f} mW")
    return f"{' and '.join(causes)} for {held:.1f} s"


def _critical_text(r: _Reading, held: float) -> str:
    how = f" ({r.critical_note})" if r.critical_note else ""
    return f"{_at(r)} ≥ critical {r.critical_c:.1f} °C{how} for {held:.1f} s"


def _release_text(r: _Reading, cfg: SupervisorConfig, held: float) -> str:
    release = r.critical_c - cfg.critical_hysteresis_c
    return (f"{_at(r)} < {release:.1f} °C (critical {r.critical_c:.1f} °C − "
            f"{cfg.critical_hysteresis_c:.1f} °C) for {held:.1f} s")


def _cool_text(r: _Reading, cfg: SupervisorConfig, held: float) -> str:
    power = f" and power {r.total_mw:.0f} mW < resume {cfg.resume_mw:.0f} mW" if cfg.resume_mw is not None else ""
    return f"{_at(r)} < cool {cfg.cool_c:.1f} °C{power} for {held:.1f} s"


# ---- per-task precision ----

def _missing(task: TaskPolicy, precision: str) -> str:
    why = task.refused.get(precision)
    return f"{precision} refused ({why})" if why else f"no {precision} variant"


def _preferred(task: TaskPolicy) -> tuple[str, str]:
    """The NORMAL precision: fp16, else fp32, else int8 (TaskPolicy has one); the note says what was missing."""
    chosen = next(p for p in PREFERENCE if p in task.available)
    missing = [_missing(task, p) for p in PREFERENCE[:PREFERENCE.index(chosen)]]
    return chosen, ": ".join([*missing, chosen])


def _precision(task: TaskPolicy, level: Level) -> tuple[str, str]:
    """(precision, note) of one task at a level; never a precision the task does not have."""
    preferred, note = _preferred(task)
    if task.precision != "auto":
        if task.precision in task.available:
            return task.precision, f"pinned {task.precision}"
        return preferred, f"pinned {task.precision} not available, {_missing(task, task.precision)}: {preferred}"
    if level == Level.NORMAL:
        return preferred, note
    if "int8" in task.available:
        return "int8", "int8"
    return preferred, f"{_missing(task, 'int8')}: staying on {preferred}"


# ---- validation ----

def _check_task(task: TaskPolicy) -> None:
    where = f"task {task.name!r}"
    if not isinstance(task.name, str) or not task.name:
        raise config_error("a task needs a name", f"name = {task.name!r}", "use the task's name from the config")
    if task.precision not in MODES:
        raise config_error(f"{where}: precision {task.precision!r} is not one of {', '.join(MODES)}",
                           f"precision = {task.precision!r}",
                           "use auto to follow the ladder, or pin fp16, int8 or fp32")
    if not isinstance(task.priority, int) or isinstance(task.priority, bool) or not 0 <= task.priority <= 100:
        raise config_error(f"{where}: priority must be an integer from 0 to 100", f"priority = {task.priority!r}",
                           "higher is more important; the default is 50")
    unknown = sorted(str(p) for p in set(task.available) | set(task.refused) if p not in PRECISIONS)
    if unknown or not task.available:
        raise config_error(f"{where}: variants must be among {', '.join(PRECISIONS)}, at least one available",
                           f"available {sorted(task.available)}, refused {sorted(task.refused)}",
                           "list the precisions whose engines are loaded")
    both = sorted(set(task.available) & set(task.refused))
    if both:
        raise config_error(f"{where}: {', '.join(both)} is both available and refused",
                           f"refused: {dict(task.refused)}",
                           "a refused variant is not available: drop it from `available`")
