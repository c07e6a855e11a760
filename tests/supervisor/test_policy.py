"""The supervisor's policy against traces built here: the ladder, hysteresis, dwell, reasons, config errors."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import pytest

from edge.config.supervisor import SupervisorConfig
from edge.errors import ConfigError, UsageError
from edge.supervisor.policy import Decision, Level, Policy, TaskPolicy, Update, check_pin
from edge.supervisor.telemetry.common import Sample

ORIN_TRIPS = {"tj": {"passive": 99.0, "critical": 104.5}}


def sample(t: float, temp: float | None = None, *, power_mw: float | None = None, zone: str = "tj",
           **fields: object) -> Sample:
    temps = {} if temp is None else {zone: temp}
    return Sample(t=t, source=str(fields.pop("source", "trace")), temps_c=fields.pop("temps_c", temps),
                  trips_c=fields.pop("trips_c", ORIN_TRIPS), total_mw=power_mw, **fields)


def trace(temps: Iterable[float], *, start: float = 0.0, step: float = 1.0, **fields: object) -> list[Sample]:
    """One sample per `step` seconds from `start`, one temperature each."""
    return [sample(start + i * step, temp, **fields) for i, temp in enumerate(temps)]


class Supervised:
    """A policy and the tasks it decides for, as the task runtimes hold them in the daemon (edge/supervisor/loop.py):
    a test changes `tasks` as a pin, a refused variant or an enabled task would."""

    def __init__(self, policy: Policy, tasks: Iterable[TaskPolicy]) -> None:
        self.policy = policy
        self.tasks = {task.name: task for task in tasks}

    def update(self, s: Sample) -> Update:
        return self.policy.update(s, self.tasks.values())

    def decide(self) -> Update:
        return self.policy.decide(self.tasks.values())


def run(sup: Supervised, samples: Sequence[Sample]) -> list[Update]:
    return [sup.update(s) for s in samples]


def levels(updates: Sequence[Update]) -> list[tuple[float, str]]:
    """(time, level) at each level change."""
    return [(u.t, u.level.name) for u in updates if u.level_changed]


def switches(updates: Sequence[Update], task: str) -> list[tuple[float, str]]:
    return [(u.t, u.decisions[task].precision) for u in updates if task in u.changed]


def det(**override: object) -> TaskPolicy:
    fields = {"name": "det", "available": {"fp16", "int8", "fp32"}, "priority": 80}
    fields.update(override)
    return TaskPolicy(**fields)


def supervised(*tasks: TaskPolicy, **config: object) -> Supervised:
    return Supervised(Policy(SupervisorConfig(**config)), tasks or [det()])


def test_ramp_up_climbs_the_ladder_with_reasons() -> None:
    sup = supervised()
    ramp = [60.0 + 0.5 * i for i in range(90)]              # 60 -> 104.5 °C at 0.5 °C/s
    updates = run(sup, trace(ramp))
    assert updates[0].decisions["det"].precision == "fp16"
    assert updates[0].decisions["det"].reason == "start at tj 60.0 °C: fp16"
    # 85 °C at t=50; held 2 s at t=52. 94 °C (99 passive - 5) at t=68; held 2 s at t=70.
    assert levels(updates) == [(52.0, "HOT"), (70.0, "CRITICAL")]
    assert switches(updates, "det") == [(0.0, "fp16"), (52.0, "int8"), (70.0, "int8")]
    hot, critical = updates[52].decisions["det"], updates[70].decisions["det"]
    assert hot.reason == "tj 86.0 °C ≥ hot 85.0 °C for 2.0 s: int8"
    assert (hot.rate_scale, hot.paused) == (1.0, False)
    assert critical.reason == ("tj 95.0 °C ≥ critical 94.0 °C (passive trip 99.0 °C − 5.0 °C) for 2.0 s: "
                               "int8, rate ×0.5")
    assert (critical.precision, critical.rate_scale) == ("int8", 0.5)


def test_before_any_sample_the_update_says_so() -> None:
    assert Policy().decide([det()]) == Update(
        t=None, level=Level.NORMAL, pausing=False, reason="start: no sample yet", reading="no sample yet", pending="",
        zone=None, temp_c=None, total_mw=None, critical_c=None,
        decisions={"det": Decision("fp16", 1.0, False, "start: no sample yet: fp16")}, changed=("det",),
        level_changed=False)


def test_a_fast_ramp_may_skip_hot_once_critical_is_confirmed() -> None:
    updates = run(supervised(), trace([60.0, 96.0, 96.0, 96.0]))
    assert levels(updates) == [(3.0, "CRITICAL")]           # hot and critical confirmed together: straight up
    updates = run(supervised(), trace([86.0, 96.0, 96.0, 96.0]))    # critical counts from its first reading, not HOT
    assert levels(updates) == [(2.0, "HOT"), (3.0, "CRITICAL")]
    assert updates[2].pending == "HOT -> CRITICAL: 1.0 of 2.0 s"


def test_oscillation_around_hot_and_cool_does_not_flap() -> None:
    sup = supervised()
    # 10 s above hot, 10 s between cool and hot, for 5 minutes: HOT once, never back (never below cool).
    around_hot = [86.0 if (i // 10) % 2 == 0 else 80.0 for i in range(300)]
    # then around cool, 74/76 °C every 10 s, 5 minutes: below cool never lasts the 30 s dwell.
    around_cool = [74.0 if (i // 10) % 2 == 0 else 76.0 for i in range(300)]
    updates = run(sup, trace(around_hot + around_cool + [70.0] * 40))
    assert levels(updates) == [(2.0, "HOT"), (630.0, "NORMAL")]
    assert switches(updates, "det") == [(0.0, "fp16"), (2.0, "int8"), (630.0, "fp16")]
    assert updates[5].pending == "" and updates[620].pending == "HOT -> NORMAL: 20.0 of 30.0 s"
    assert updates[630].decisions["det"].reason == "tj 70.0 °C < cool 75.0 °C for 30.0 s: fp16"


def test_alternating_readings_over_hot_never_confirm() -> None:
    sup = supervised()
    updates = run(sup, trace([86.0, 84.0] * 100, step=0.5))  # 2 Hz, every other reading over hot
    assert levels(updates) == []
    assert {u.decisions["det"].precision for u in updates} == {"fp16"}


@pytest.mark.parametrize("step,count,held", [(1.0, 2, "1.0"), (0.5, 4, "1.5")])    # 1 Hz and 2 Hz
def test_a_spike_shorter_than_the_confirm_time_is_ignored(step: float, count: int, held: str) -> None:
    sup = supervised()
    spike = [60.0] * 10 + [100.0] * count + [60.0] * 10    # over critical for less than the 2 s confirm time
    updates = run(sup, trace(spike, step=step))
    assert levels(updates) == []
    assert [u.t for u in updates if u.changed] == [0.0]
    assert updates[9 + count].pending == f"NORMAL -> CRITICAL: {held} of 2.0 s"
    assert updates[10 + count].pending == ""


def test_a_spike_as_long_as_the_confirm_time_counts() -> None:
    sup = supervised()
    updates = run(sup, trace([60.0, 90.0, 90.0, 90.0, 60.0]))
    assert levels(updates) == [(3.0, "HOT")]
    assert updates[3].reason == "tj 90.0 °C ≥ hot 85.0 °C for 2.0 s"


def test_hot_and_the_budget_count_at_their_value_the_levels_below_only_under_it() -> None:
    assert run(supervised(), trace([85.0] * 3))[2].reason == "tj 85.0 °C ≥ hot 85.0 °C for 2.0 s"
    at_budget = run(supervised(power_budget_mw=20000), [sample(float(i), 60.0, power_mw=20000.0) for i in range(3)])
    assert at_budget[2].reason == "power 20000 mW ≥ budget 20000 mW for 2.0 s"
    assert levels(run(supervised(), trace([90.0] * 3 + [75.0] * 60))) == [(2.0, "HOT")]           # at cool
    assert levels(run(supervised(), trace([96.0] * 3 + [90.0] * 60))) == [(2.0, "CRITICAL")]      # at release
    at_resume = [sample(float(i), 60.0, power_mw=21000.0 if i < 3 else 18000.0) for i in range(63)]
    assert levels(run(supervised(power_budget_mw=20000), at_resume)) == [(2.0, "HOT")]


def test_critical_slows_every_task_then_pauses_low_priority() -> None:
    low = TaskPolicy("lanes", {"fp16", "int8"}, priority=20)
    pinned = TaskPolicy("signs", {"fp16", "int8"}, precision="fp16", priority=10)
    sup = supervised(det(), low, pinned, TaskPolicy("mid", {"fp16", "int8"}, priority=50))
    updates = run(sup, trace([96.0] * 40))
    entered = updates[2]
    assert entered.level == Level.CRITICAL and not entered.pausing
    assert {n: (d.precision, d.rate_scale, d.paused) for n, d in entered.decisions.items()} == {
        "det": ("int8", 0.5, False), "lanes": ("int8", 0.5, False), "signs": ("fp16", 0.5, False),
        "mid": ("int8", 0.5, False)}
    assert not any(u.pausing for u in updates[:22])
    paused = updates[22]                                     # 20 s at or above critical since entering
    assert paused.pausing and paused.changed == ("lanes", "signs")
    assert paused.reason == "tj 96.0 °C ≥ critical 94.0 °C for 20.0 s at rate ×0.5: pausing priority < 50"
    assert updates[-1].reason == paused.reason               # said once, when the pause began
    assert {n: (d.precision, d.rate_scale, d.paused) for n, d in paused.decisions.items()} == {
        "det": ("int8", 0.5, False), "lanes": ("int8", 0.0, True), "signs": ("fp16", 0.0, True),
        "mid": ("int8", 0.5, False)}                         # priority 50 is not below 50
    assert paused.decisions["lanes"].reason.endswith("int8, paused (priority 20 < 50)")
    assert paused.decisions["signs"].reason.endswith("pinned fp16, paused (priority 10 < 50)")


def test_no_pause_when_the_lower_rate_brings_the_reading_below_critical() -> None:
    sup = supervised(det(), TaskPolicy("lanes", {"fp16", "int8"}, priority=20))
    updates = run(sup, trace([96.0] * 10 + [92.0] * 60))    # below critical, above its release (90 °C)
    assert levels(updates) == [(2.0, "CRITICAL")]
    assert not any(u.pausing for u in updates)


def test_cool_down_steps_down_one_level_at_a_time_after_each_dwell() -> None:
    sup = supervised(det(), TaskPolicy("lanes", {"fp16", "int8"}, priority=20))
    updates = run(sup, trace([97.0] * 30 + [60.0] * 80))    # paused at t=22, cool from t=30
    assert levels(updates) == [(2.0, "CRITICAL"), (60.0, "HOT"), (90.0, "NORMAL")]
    hot, normal = updates[60], updates[90]
    assert hot.reason == "tj 60.0 °C < 90.0 °C (critical 94.0 °C − 4.0 °C) for 30.0 s"
    assert hot.pausing is False and (hot.decisions["lanes"].paused, hot.decisions["lanes"].rate_scale) == (False, 1.0)
    assert updates[70].pending == "HOT -> NORMAL: 10.0 of 30.0 s"    # cool since t=30, counted from entering HOT
    assert hot.decisions["det"].precision == "int8"
    assert normal.reason == "tj 60.0 °C < cool 75.0 °C for 30.0 s"   # the dwell restarts on entering HOT
    assert normal.decisions["det"].precision == "fp16" and updates[-1].reason == normal.reason
    updates = run(supervised(), trace([96.0] * 3 + [80.0] * 40))   # below the release level, above cool
    assert levels(updates) == [(2.0, "CRITICAL"), (33.0, "HOT")]
    assert updates[13].pending == "CRITICAL -> HOT: 10.0 of 30.0 s"
    assert updates[33].reason == "tj 80.0 °C < 90.0 °C (critical 94.0 °C − 4.0 °C) for 30.0 s"


def test_power_over_budget_counts_as_hot_and_resumes_below_the_resume_level() -> None:
    sup = supervised(power_budget_mw=20000)                 # resume: 90 % = 18000 mW
    power = [15000.0] * 5 + [21000.0] * 5 + [19000.0] * 60 + [17000.0] * 40
    updates = run(sup, [sample(float(i), 60.0, power_mw=p) for i, p in enumerate(power)])
    assert levels(updates) == [(7.0, "HOT"), (100.0, "NORMAL")]
    assert updates[7].decisions["det"].reason == "power 21000 mW ≥ budget 20000 mW for 2.0 s: int8"
    assert updates[100].reason == "tj 60.0 °C < cool 75.0 °C and power 17000 mW < resume 18000 mW for 30.0 s"


def test_temperature_and_power_together_are_both_named() -> None:
    sup = supervised(power_budget_mw=20000, power_resume_mw=16000)
    updates = run(sup, [sample(float(i), 88.0, power_mw=22000.0) for i in range(3)])
    assert updates[2].reason == "tj 88.0 °C ≥ hot 85.0 °C and power 22000 mW ≥ budget 20000 mW for 2.0 s"
    under = run(supervised(power_budget_mw=20000), [sample(float(i), 88.0, power_mw=15000.0) for i in range(3)])
    assert under[2].reason == "tj 88.0 °C ≥ hot 85.0 °C for 2.0 s"         # power under its budget is not named


def test_unknown_power_with_a_budget_holds_hot() -> None:
    sup = supervised(power_budget_mw=20000)
    updates = run(sup, [sample(float(i), 60.0, power_mw=25000.0) for i in range(3)])
    updates += run(sup, [sample(float(i), 60.0) for i in range(3, 100)])
    assert levels(updates) == [(2.0, "HOT")]
    assert updates[-1].reason.startswith("power unknown with a budget set: holding HOT; power 25000 mW")
    # at cool the temperature itself holds HOT: no power is waited for
    assert sup.update(sample(100.0, 75.0)).reason == "power 25000 mW ≥ budget 20000 mW for 2.0 s"


def test_int8_refused_by_its_gate_stays_and_says_why() -> None:
    gated = TaskPolicy("lanes", {"fp16", "fp32"}, refused={"int8": "agreement 0.91 < 0.95"})
    sup = supervised(det(), gated, TaskPolicy("pose", {"fp32"}))
    updates = run(sup, trace([90.0] * 3))
    hot = updates[2].decisions
    assert hot["lanes"].precision == "fp16"
    assert hot["lanes"].reason == ("tj 90.0 °C ≥ hot 85.0 °C for 2.0 s: "
                                   "int8 refused (agreement 0.91 < 0.95): staying on fp16")
    assert hot["pose"].reason.endswith("no int8 variant: staying on fp32")
    assert updates[0].decisions["pose"].reason == "start at tj 90.0 °C: no fp16 variant: fp32"
    assert updates[2].changed == ("det",)                   # the others did not change


def test_pinned_tasks_never_switch_precision() -> None:
    pinned = [TaskPolicy(f"pin_{p}", {"fp16", "int8", "fp32"}, precision=p, priority=90) for p in ("fp16", "int8",
                                                                                                   "fp32")]
    sup = supervised(det(), *pinned)
    updates = run(sup, trace([60.0] * 5 + [88.0] * 10 + [97.0] * 40 + [60.0] * 80))
    assert [name for _, name in levels(updates)] == ["HOT", "CRITICAL", "HOT", "NORMAL"]
    for task in pinned:
        assert {u.decisions[task.name].precision for u in updates} == {task.precision}
        assert {u.decisions[task.name].rate_scale for u in updates} == {1.0, 0.5}      # CRITICAL still slows
        assert all(f"pinned {task.precision}" in u.decisions[task.name].reason for u in updates)


def test_a_pinned_precision_that_is_not_available_runs_the_preferred_one() -> None:
    gated = TaskPolicy("lanes", {"fp16"}, precision="int8", refused={"int8": "agreement 0.91 < 0.95"})
    sup = supervised(gated)
    updates = run(sup, trace([60.0, 90.0, 90.0, 90.0]))
    assert {u.decisions["lanes"].precision for u in updates} == {"fp16"}
    assert updates[-1].decisions["lanes"].reason.endswith(
        "pinned int8 not available, int8 refused (agreement 0.91 < 0.95): fp16")


def test_a_pin_at_run_time() -> None:
    sup = supervised()
    run(sup, trace([90.0] * 3))
    assert sup.decide().decisions["det"].precision == "int8"
    check_pin(sup.tasks["det"], "fp16")
    sup.tasks["det"] = dataclasses.replace(sup.tasks["det"], precision="fp16")
    pinned = sup.decide()
    assert pinned.changed == ("det",) and pinned.decisions["det"].reason.endswith(": pinned fp16")
    assert sup.decide().changed == ()                       # reported once
    sup.tasks["det"] = dataclasses.replace(sup.tasks["det"], precision="auto")
    assert sup.decide().decisions["det"].precision == "int8"


@pytest.mark.parametrize("mode,rendered", [
    ("int8", "task 'lanes' cannot be pinned to int8: int8 refused (agreement 0.91 < 0.95)\n"
             "Note: available: fp16, fp32\nHint: pin an available precision, or build and load that variant first"),
    ("fp8", "precision 'fp8' for task 'lanes' is not one of auto, fp32, fp16, int8\n"
            "Hint: use auto to follow the ladder, or pin fp16, int8 or fp32"),
])
def test_a_pin_that_cannot_run_is_refused(mode: str, rendered: str) -> None:
    lanes = TaskPolicy("lanes", {"fp16", "fp32"}, refused={"int8": "agreement 0.91 < 0.95"})
    with pytest.raises(ConfigError) as refused:
        check_pin(lanes, mode)
    assert refused.value.render() == f"supervisor: {rendered}"
    check_pin(lanes, "fp16")
    check_pin(lanes, "auto")


def test_the_tasks_are_given_at_each_call() -> None:
    """The policy keeps no task of its own: one enabled, disabled or refused a variant since the last call is
    decided as it is now."""
    sup = supervised()
    run(sup, trace([90.0] * 3))
    sup.tasks["lanes"] = TaskPolicy("lanes", {"fp16", "int8"})
    added = sup.decide()
    assert added.changed == ("lanes",) and added.decisions["lanes"].precision == "int8"
    sup.tasks["lanes"] = TaskPolicy("lanes", {"fp16"}, refused={"int8": "failed to load: no memory"})
    refused = sup.decide()
    assert refused.changed == ("lanes",) and refused.decisions["lanes"].reason == (
        "tj 90.0 °C ≥ hot 85.0 °C for 2.0 s: int8 refused (failed to load: no memory): staying on fp16")
    del sup.tasks["lanes"]
    assert list(sup.decide().decisions) == ["det"]
    with pytest.raises(UsageError) as twice:
        sup.policy.decide([det(), TaskPolicy("lanes", {"fp16"}), det()])
    assert twice.value.render() == ("supervisor: task 'det' is given twice\nNote: tasks: det, lanes, det\n"
                                    "Hint: give each task once, as its runtime has it now")


def test_source_none_holds_the_level_and_says_so() -> None:
    sup = supervised()
    updates = run(sup, [sample(float(i), source="none") for i in range(100)])
    assert levels(updates) == []
    assert updates[-1].decisions["det"].reason == (
        "no usable temperature (telemetry source none): holding NORMAL; since the start: fp16")   # why: once
    assert updates[-1].reading.startswith("no usable temperature (telemetry source none), power unknown")


def test_failed_zones_hold_hot_until_a_full_dwell_of_real_readings() -> None:
    sup = supervised()
    updates = run(sup, trace([90.0] * 5))
    failed = [sample(float(t), temps_c={}, problems=("cv0: EAGAIN", "tj: EIO", "gpu: EIO")) for t in range(5, 100)]
    updates += run(sup, failed)
    assert levels(updates) == [(2.0, "HOT")]
    assert updates[-1].decisions["det"].reason == (
        "no usable temperature (no zone read; cv0: EAGAIN; tj: EIO; +1 more): holding HOT; "
        "tj 90.0 °C ≥ hot 85.0 °C for 2.0 s: int8")
    updates += run(sup, trace([60.0] * 40, start=100.0))
    assert levels(updates) == [(2.0, "HOT"), (130.0, "NORMAL")]


def test_offline_and_board_zones_do_not_count() -> None:
    sup = supervised()
    offline = {"cv0": -256.0, "board": 99.0, "thermal-fan-est": 99.0}
    held = sup.update(sample(0.0, temps_c=offline))
    assert held.temp_c is None
    assert held.reason.startswith("no usable temperature (no usable SoC zone among board 99.0, cv0 -256.0, "
                                  "thermal-fan-est 99.0): holding NORMAL")
    board = {"ambient": 30.0, "board": 40.0, "fan-est": 41.0, "pmic": 45.0, "thermal-fan-est": 40.0}
    held = sup.update(sample(1.0, temps_c=board, problems=("cv0: EAGAIN", "tj: EIO")))    # four zones, two problems
    assert held.reading == ("no usable temperature (no usable SoC zone among ambient 30.0, board 40.0, fan-est 41.0, "
                            "pmic 45.0; cv0: EAGAIN; tj: EIO), power unknown, critical 94.0 °C")


def test_readings_beyond_the_plausible_range_are_offline() -> None:
    """The edges of PLAUSIBLE_C (−60..150 °C, the readers' range too) are readings; beyond them a zone is offline."""
    sup = supervised()
    u = sup.update(sample(0.0, temps_c={"tj": 150.0, "gpu": 150.5}))
    assert (u.zone, u.temp_c) == ("tj", 150.0)
    u = sup.update(sample(1.0, temps_c={"tj": 150.1, "cpu": -60.0}))
    assert (u.zone, u.temp_c) == ("cpu", -60.0)
    assert sup.update(sample(2.0, temps_c={"tj": -60.1})).temp_c is None


def test_the_hottest_soc_zone_is_used_by_default() -> None:
    sup = supervised()
    u = sup.update(sample(0.0, temps_c={"cpu-thermal": 71.0, "GPU": 74.5, "cv1": 73.0, "board": 80.0,
                                        "soc2": 72.0, "tj": math.nan}))
    assert (u.zone, u.temp_c) == ("GPU", 74.5)
    assert u.reading == "GPU 74.5 °C, power unknown, critical 94.0 °C"
    u = sup.update(sample(1.0, temps_c={"cpu": 71.0, "cpu@thermal_zone7": 76.0, "Tboard": 80.0}))
    assert (u.zone, u.temp_c) == ("cpu@thermal_zone7", 76.0)


@pytest.mark.parametrize("temps,reason", [
    ({"tj-thermal": 88.0, "gpu": 90.0}, "tj-thermal 88.0 °C ≥ hot 85.0 °C for 2.0 s"),
    ({"gpu": 88.0, "cpu": 80.0}, "gpu 88.0 °C (zone tj missing: hottest SoC zone) ≥ hot 85.0 °C for 2.0 s"),
    ({"tj": -256.0, "gpu": 88.0}, "gpu 88.0 °C (zone tj reads -256.0 °C: hottest SoC zone) ≥ hot 85.0 °C for 2.0 s"),
    ({"tj": -256.0, "board": 88.0}, "no usable temperature (no usable zone tj or SoC zone among board 88.0, "
                                    "tj -256.0): holding NORMAL; since the start"),
])
def test_a_configured_zone_is_used_and_falls_back_when_unusable(temps: dict, reason: str) -> None:
    updates = run(supervised(zone="tj"), [sample(float(t), temps_c=temps) for t in range(3)])
    assert updates[-1].reason == reason


def test_critical_comes_from_the_trips_of_the_zone_configured_and_the_zone_read() -> None:
    trips = {"tj": {"passive": 99.0}, "gpu": {"passive": 97.0}, "cpu": {"passive": 95.0}, "board": {"passive": 60.0}}
    sup = supervised(zone="tj")
    assert sup.update(sample(0.0, 60.0, trips_c=trips)).critical_c == 94.0
    assert sup.update(sample(1.0, 60.0, zone="gpu", trips_c=trips)).reading == (
        "gpu 60.0 °C (zone tj missing: hottest SoC zone), power unknown, critical 92.0 °C")
    assert sup.update(sample(2.0, trips_c=trips)).reading == (
        "no usable temperature (no zone read), power unknown, critical 94.0 °C")
    assert supervised().update(sample(0.0, 60.0, trips_c=trips)).critical_c == 90.0     # no zone: every SoC zone


def test_critical_comes_from_the_lowest_passive_trip() -> None:
    sup = supervised()
    trips = {"tj": {"passive": 99.0}, "gpu": {"passive": 95.0, "critical": 100.0}, "board": {"passive": 60.0}}
    updates = run(sup, trace([91.0] * 3, trips_c=trips))
    assert updates[-1].critical_c == 90.0
    assert updates[-1].reason == "tj 91.0 °C ≥ critical 90.0 °C (passive trip 95.0 °C − 5.0 °C) for 2.0 s"


def test_critical_without_trips_uses_the_orin_default_and_configured_wins() -> None:
    assert run(supervised(), trace([95.0] * 3, trips_c={}))[-1].reason == (
        "tj 95.0 °C ≥ critical 94.0 °C (default passive trip 99.0 °C − 5.0 °C) for 2.0 s")
    sup = supervised(critical_c=92.0)
    updates = run(sup, trace([92.0] * 3))
    assert updates[-1].reason == "tj 92.0 °C ≥ critical 92.0 °C for 2.0 s"


@pytest.mark.parametrize("passive", [88.0, 90.0])
def test_a_derived_critical_at_or_below_hot_is_raised_to_hot(passive: float) -> None:
    updates = run(supervised(), trace([86.0] * 3, trips_c={"tj": {"passive": passive}}))
    assert levels(updates) == [(2.0, "CRITICAL")]
    assert updates[-1].reason == (f"tj 86.0 °C ≥ critical 85.0 °C (passive trip {passive:.1f} °C − 5.0 °C = "
                                  f"{passive - 5:.1f} °C, not above hot: raised to hot) for 2.0 s")


def test_the_reading_names_the_power_from_0_mw() -> None:
    sup = supervised()
    for t, power, text in [(0.0, 15000.0, "15000 mW"), (1.0, 0.0, "0 mW"), (2.0, -1.0, "power unknown")]:
        u = sup.update(sample(t, 60.0, power_mw=power))
        assert (u.reading, u.total_mw) == (f"tj 60.0 °C, {text}, critical 94.0 °C", power if power >= 0 else None)


def test_time_going_backwards_restarts_the_timers() -> None:
    sup = supervised()
    run(sup, trace([90.0] * 3 + [60.0] * 20))               # HOT at t=2, cool since t=3
    restarted = run(sup, trace([60.0] * 31, start=5.0))     # a replay restarted at t=5
    assert [u.level.name for u in restarted[:30]] == ["HOT"] * 30
    assert restarted[0].reason == "tj 90.0 °C ≥ hot 85.0 °C for 2.0 s"     # the level and its reason are kept
    assert restarted[30].level == Level.NORMAL and restarted[30].t == 35.0
    repeated = run(supervised(), trace([90.0] * 2) + trace([90.0] * 2, start=1.0))  # t = 0, 1, 1, 2: no restart
    assert levels(repeated) == [(2.0, "HOT")]


def test_the_same_trace_gives_the_same_updates() -> None:
    samples = trace([60.0 + 40.0 * math.sin(i / 30.0) ** 2 for i in range(600)])
    first = run(supervised(det(), TaskPolicy("lanes", {"fp16", "int8"}, priority=5)), samples)
    second = run(supervised(det(), TaskPolicy("lanes", {"fp16", "int8"}, priority=5)), samples)
    assert first == second
    assert len(levels(first)) >= 4


def test_non_finite_time_is_refused() -> None:
    with pytest.raises(UsageError) as refused:
        supervised().update(sample(math.nan, 60.0))
    assert refused.value.render() == ("supervisor: sample time nan is not a finite number of seconds\n"
                                      "Note: source trace\nHint: telemetry readers stamp samples with time.monotonic()")


@pytest.mark.parametrize("config,message", [
    ({"cool_c": 85.0}, r"cool_c must be below hot_c\nNote: cool_c 85.0 °C, hot_c 85.0 °C\nHint: lower cool_c"),
    ({"critical_c": 80.0}, r"critical_c must be above hot_c\nNote: hot_c 85.0 °C, critical_c 80.0 °C"),
    ({"hot_c": math.nan}, r"hot_c must be a finite number\nNote: hot_c = nan"),
    ({"hot_c": "85"}, r"hot_c must be a finite number\nNote: hot_c = '85'"),
    ({"dwell_s": True}, r"dwell_s must be a finite number\nNote: dwell_s = True"),
    ({"dwell_s": 0}, r"dwell_s must be above 0 s\nNote: dwell_s = 0"),
    ({"confirm_s": -1.0}, r"confirm_s must be 0 s or more\nNote: confirm_s = -1.0"),
    ({"pause_after_s": -5}, r"pause_after_s must be 0 s or more"),
    ({"critical_margin_c": 0.0}, r"critical_margin_c must be above 0 °C"),
    ({"critical_hysteresis_c": -1.0}, r"critical_hysteresis_c must be above 0 °C"),
    ({"power_budget_mw": 20000, "power_resume_mw": 20000},
     r"power_resume_mw must be above 0 and below power_budget_mw\nNote: power_resume_mw 20000 mW, "
     r"power_budget_mw 20000 mW\nHint: e.g. 18000"),
    ({"power_resume_mw": 18000}, r"power_resume_mw is set but power_budget_mw is off"),
    ({"power_budget_mw": -1}, r"power_budget_mw must be above 0 mW"),
    ({"critical_rate_scale": 0.0}, r"critical_rate_scale must be above 0 and at most 1"),
    ({"critical_rate_scale": 1.5}, r"critical_rate_scale must be above 0 and at most 1"),
    ({"pause_below_priority": 102}, r"pause_below_priority must be an integer from 0 to 101"),
    ({"zone": ""}, r"zone must be a zone name or null"),
])
def test_invalid_config_values_are_refused(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^supervisor: {message}"):
        SupervisorConfig(**config)


PRIORITY = ("task 'det': priority must be an integer from 0 to 100\nNote: priority = {}\n"
            "Hint: higher is more important; the default is 50")
VARIANTS = ("task 'det': variants must be among fp32, fp16, int8, at least one available\n"
            "Note: available {}, refused []\nHint: list the precisions whose engines are loaded")


@pytest.mark.parametrize("task,rendered", [
    ({"precision": "fp8"}, "task 'det': precision 'fp8' is not one of auto, fp32, fp16, int8\nNote: precision = 'fp8'\n"
                           "Hint: use auto to follow the ladder, or pin fp16, int8 or fp32"),
    ({"priority": 101}, PRIORITY.format("101")),
    ({"priority": -1}, PRIORITY.format("-1")),
    ({"priority": True}, PRIORITY.format("True")),
    ({"priority": "50"}, PRIORITY.format("'50'")),
    ({"available": set()}, VARIANTS.format("[]")),
    ({"available": {"fp16", "bf16"}}, VARIANTS.format("['bf16', 'fp16']")),
    ({"refused": {"int8": "agreement 0.91 < 0.95", "fp32": "failed to load"}},
     "task 'det': fp32, int8 is both available and refused\n"
     "Note: refused: {'int8': 'agreement 0.91 < 0.95', 'fp32': 'failed to load'}\n"
     "Hint: a refused variant is not available: drop it from `available`"),
    ({"name": ""}, "a task needs a name\nNote: name = ''\nHint: use the task's name from the config"),
])
def test_invalid_task_values_are_refused(task: dict, rendered: str) -> None:
    with pytest.raises(ConfigError) as refused:
        det(**task)
    assert refused.value.render() == f"supervisor: {rendered}"


def test_a_task_takes_priorities_0_to_100_and_keeps_its_variants_as_given() -> None:
    assert (det(priority=0).priority, det(priority=100).priority) == (0, 100)
    available, refused = {"fp16"}, {"int8": "agreement 0.91 < 0.95"}
    task = TaskPolicy("lanes", available, refused=refused)
    available.add("int8")
    refused["fp32"] = "failed to load"
    assert (task.available, dict(task.refused)) == ({"fp16"}, {"int8": "agreement 0.91 < 0.95"})


def test_defaults_and_the_resume_level() -> None:
    cfg = SupervisorConfig()
    assert (cfg.zone, cfg.hot_c, cfg.cool_c, cfg.critical_c, cfg.dwell_s, cfg.confirm_s) == (
        None, 85.0, 75.0, None, 30.0, 2.0)
    assert cfg.resume_mw is None
    assert SupervisorConfig(power_budget_mw=20000).resume_mw == 18000.0
    assert SupervisorConfig(power_budget_mw=20000, power_resume_mw=15000).resume_mw == 15000
