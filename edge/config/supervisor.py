"""The supervisor's thresholds (YAML `supervisor:`): one definition, read from the config and taken by the policy
(edge/supervisor/policy.py), with the rules that keep them consistent. docs/supervisor.md explains them."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from edge.errors import ConfigError

DEFAULT_PASSIVE_TRIP_C = 99.0           # Orin sw-throttle (mainline T234 device tree); shutdown at 104.5 °C
RESUME_SHARE = 0.9                      # power_resume_mw default: 90 % of the budget
FLOAT_BITS = 1024                       # an int of more bits is beyond a float's range (2**1024 overflows)


class SupervisorConfig(BaseModel):
    """The system's thresholds (YAML `supervisor:`); defaults for an Orin module (docs/supervisor.md).

    zone: None = the hottest SoC zone. hot_c 85: 14 °C below the 99 °C passive trip, room for the INT8
    switch to act (the module heats at most a few tenths of a degree a second). cool_c 75: the 10 °C
    hysteresis must be wider than the drop the FP16 -> INT8 switch itself causes (R_th x the power saved;
    2.5 °C/W x 3 W = 7.5 °C in benchmarks/thermal_sim.py's assumptions), else at a steady ambient the
    return to FP16 heats the module back over hot_c and the level cycles; measure that drop on the vehicle.
    confirm_s 2: two kernel polls of the thermal zones (1 s on Orin) and 2-4 samples at 1-2 Hz, so one odd
    reading never switches; it delays a real step by under a degree. dwell_s 30: each swap costs a frame
    boundary and an event; 30 s spaces them well apart while the module's thermal time constant is minutes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: str | None = None
    hot_c: float = 85.0
    cool_c: float = 75.0
    critical_c: float | None = None          # None: lowest passive trip of the watched zones - margin
    critical_margin_c: float = 5.0
    critical_hysteresis_c: float = 4.0       # CRITICAL -> HOT below critical_c - this, for dwell_s
    power_budget_mw: float | None = None     # module input power (Sample.total_mw); None = off
    power_resume_mw: float | None = None     # None: 90 % of the budget
    dwell_s: float = 30.0
    confirm_s: float = 2.0                   # 0: act on the first sample over a level
    critical_rate_scale: float = 0.5
    pause_after_s: float = 20.0              # at or above critical_c this long in CRITICAL: pause
    pause_below_priority: int = 50           # 0: never pause; 101: pause every task

    @model_validator(mode="before")
    @classmethod
    def _as_given(cls, data: Any, info: ValidationInfo) -> Any:
        """Values from code (no validation context) are checked as given, and a broken rule or an unknown key is
        a ConfigError: a string or a bool is no number here. A config file's values (parse_config passes a
        context) are parsed first, `hot_c: ${HOT_C}` giving "85", which is 85.0; `_thresholds` then checks them,
        and a broken rule is one of the file's problems."""
        if info.context is None and isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise config_error(f"unknown key {unknown[0]!r}" if len(unknown) == 1 else
                                   f"unknown keys {', '.join(map(repr, unknown))}",
                                   ", ".join(f"{key} = {_shown(data[key])}" for key in unknown),
                                   f"remove {'it' if len(unknown) == 1 else 'them'} or fix the spelling; the keys"
                                   f" are {', '.join(cls.model_fields)}")
            _check(SupervisorConfig.model_construct(**data))
        return data

    @model_validator(mode="after")
    def _thresholds(self) -> SupervisorConfig:
        try:
            _check(self)
        except ConfigError as exc:
            what = exc.what.removeprefix("supervisor: ")
            raise ValueError(f"{what} ({exc.note}); {exc.hint}" if exc.note else what) from None
        return self

    @property
    def resume_mw(self) -> float | None:
        """The power below which HOT may step down; None when the budget is off."""
        if self.power_budget_mw is None:
            return None
        return self.power_resume_mw if self.power_resume_mw is not None else RESUME_SHARE * self.power_budget_mw


class SupervisorSection(SupervisorConfig):
    """YAML `supervisor:`: the thresholds, and how the daemon runs the supervisor."""

    enabled: bool = True
    telemetry: str = "auto"                 # auto, none, jtop, sysfs, sysfs:///ROOT, nvml, trace:///PATH.jsonl
    interval_s: float = Field(1.0, ge=0.1, le=60)

    def policy(self) -> SupervisorConfig:
        """The thresholds alone, for the policy."""
        return SupervisorConfig(**self.model_dump(include=set(SupervisorConfig.model_fields)))


def _check(cfg: SupervisorConfig) -> None:
    _check_numbers(cfg)
    _check_temperatures(cfg)
    _check_power(cfg)
    _check_times_and_actions(cfg)


def _default(name: str) -> Any:
    return SupervisorConfig.model_fields[name].default


def config_error(what: str, note: str, hint: str) -> ConfigError:
    """The error of a broken rule of the supervisor's: `supervisor: WHAT`, the values, the fix."""
    return ConfigError(f"supervisor: {what}", note=note, hint=hint)


def is_finite_number(value: object) -> bool:
    """An int or a float, not a bool, not NaN or infinite, and within a float's range: an int such as 10**400
    is not (math.isfinite raises OverflowError on it, as would every float operation of the policy)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: object) -> str:
    """A value for an error message: its repr, cut after 40 characters; an int beyond a float's range by its
    size (repr refuses an int of over 4300 digits)."""
    if isinstance(value, int) and value.bit_length() > FLOAT_BITS:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def _check_numbers(cfg: SupervisorConfig) -> None:
    optional = ("critical_c", "power_budget_mw", "power_resume_mw")
    for name, field in SupervisorConfig.model_fields.items():
        value = getattr(cfg, name)
        if name == "zone" or (value is None and name in optional):
            continue
        if not is_finite_number(value):
            raise config_error(f"{name} must be a finite number", f"{name} = {_shown(value)}",
                                       f"give a number; the default is {field.default!r}")
    if cfg.zone is not None and (not isinstance(cfg.zone, str) or not cfg.zone.strip()):
        raise config_error("zone must be a zone name or null (the hottest SoC zone)", f"zone = {cfg.zone!r}",
                           "use a name from the telemetry, e.g. tj, gpu or cpu, or leave it out")


def _check_temperatures(cfg: SupervisorConfig) -> None:
    if not cfg.cool_c < cfg.hot_c:
        raise config_error("cool_c must be below hot_c", f"cool_c {cfg.cool_c} °C, hot_c {cfg.hot_c} °C",
                           f"lower cool_c, e.g. to {cfg.hot_c - 10:g} (hot_c - 10)")
    if cfg.critical_c is not None and not cfg.hot_c < cfg.critical_c:
        raise config_error("critical_c must be above hot_c", f"hot_c {cfg.hot_c} °C, critical_c {cfg.critical_c} °C",
                           f"raise critical_c (at most the passive trip {DEFAULT_PASSIVE_TRIP_C:g} °C - a margin), "
                           "or leave it out to derive it from the trip points")
    for name in ("critical_margin_c", "critical_hysteresis_c"):
        if getattr(cfg, name) <= 0:
            raise config_error(f"{name} must be above 0 °C", f"{name} = {getattr(cfg, name)}",
                               f"the default is {_default(name)}")


def _check_power(cfg: SupervisorConfig) -> None:
    budget, resume = cfg.power_budget_mw, cfg.power_resume_mw
    if budget is None:
        if resume is not None:
            raise config_error("power_resume_mw is set but power_budget_mw is off", f"power_resume_mw = {resume}",
                               "set power_budget_mw too, or remove power_resume_mw")
        return
    if budget <= 0:
        raise config_error("power_budget_mw must be above 0 mW", f"power_budget_mw = {budget}",
                           "give the module's budget in mW (e.g. 20000 for 20 W), or null to turn it off")
    if resume is not None and not 0 < resume < budget:
        raise config_error("power_resume_mw must be above 0 and below power_budget_mw",
                           f"power_resume_mw {resume} mW, power_budget_mw {budget} mW",
                           f"e.g. {RESUME_SHARE * budget:.0f} (90 % of the budget, the default when left out)")


def _check_times_and_actions(cfg: SupervisorConfig) -> None:
    if cfg.dwell_s <= 0:
        raise config_error("dwell_s must be above 0 s", f"dwell_s = {cfg.dwell_s}", "the default is 30 s")
    for name in ("confirm_s", "pause_after_s"):
        if getattr(cfg, name) < 0:
            raise config_error(f"{name} must be 0 s or more", f"{name} = {getattr(cfg, name)}",
                               f"the default is {_default(name)} s")
    if not 0 < cfg.critical_rate_scale <= 1:
        raise config_error("critical_rate_scale must be above 0 and at most 1",
                           f"critical_rate_scale = {cfg.critical_rate_scale}",
                           "e.g. 0.5 halves each task's frame rate in CRITICAL")
    if not isinstance(cfg.pause_below_priority, int) or not 0 <= cfg.pause_below_priority <= 101:
        raise config_error("pause_below_priority must be an integer from 0 to 101",
                           f"pause_below_priority = {_shown(cfg.pause_below_priority)}",
                           "0 pauses no task, 101 pauses every task; the default is 50")
