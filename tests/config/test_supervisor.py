"""The supervisor's thresholds (edge/config/supervisor.py): one definition, two ways in. From code the values are
checked as given (tests/supervisor/test_policy.py has every rule); from a file they are parsed first and a broken
rule is one of the file's problems."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.loader import parse_config
from edge.config.supervisor import SupervisorConfig, SupervisorSection
from edge.errors import ConfigError

BASE = ("version: 1\ncameras:\n  - id: c\n    uri: test://bars\ntasks:\n  - name: t\n    type: detector\n"
        "    model: m.onnx\n    cameras: [c]\n")


def test_a_files_values_are_parsed_before_the_rules(tmp_path: Path) -> None:
    text = BASE + "supervisor:\n  hot_c: ${HOT_C}\n  pause_below_priority: 20.0\n"
    section = parse_config(text, source="t.yaml", base_dir=tmp_path, environ={"HOT_C": "80"}).supervisor
    assert (section.hot_c, section.pause_below_priority) == (80.0, 20)
    assert section.policy() == SupervisorConfig(hot_c=80.0, pause_below_priority=20)
    assert type(section.policy()) is SupervisorConfig


def test_a_broken_rule_in_a_file_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    text = BASE.replace("test://bars", "bogus://x") + "supervisor:\n  cool_c: 90\n"
    with pytest.raises(ConfigError, match=r"2 problem\(s\)") as caught:
        parse_config(text, source="t.yaml", base_dir=tmp_path, environ={})
    assert ("supervisor: cool_c must be below hot_c (cool_c 90.0 °C, hot_c 85.0 °C); lower cool_c, e.g. to 75"
            " (hot_c - 10)") in str(caught.value)


def test_the_section_is_the_thresholds_and_three_keys_of_its_own() -> None:
    extra = set(SupervisorSection.model_fields) - set(SupervisorConfig.model_fields)
    assert extra == {"enabled", "telemetry", "interval_s"}
    with pytest.raises(ConfigError, match="^supervisor: cool_c must be below hot_c"):
        SupervisorSection(telemetry="none", cool_c=90)


# Each rule's whole error, as a user reads it (what, the values, the fix), and the edges of each range.
REFUSED = [
    ({"hot_c": "warm"}, "supervisor: hot_c must be a finite number\nNote: hot_c = 'warm'\n"
                        "Hint: give a number; the default is 85.0"),
    ({"zone": ""}, "supervisor: zone must be a zone name or null (the hottest SoC zone)\nNote: zone = ''\n"
                   "Hint: use a name from the telemetry, e.g. tj, gpu or cpu, or leave it out"),
    ({"cool_c": 90.0}, "supervisor: cool_c must be below hot_c\nNote: cool_c 90.0 °C, hot_c 85.0 °C\n"
                       "Hint: lower cool_c, e.g. to 75 (hot_c - 10)"),
    ({"critical_c": 85.0}, "supervisor: critical_c must be above hot_c\nNote: hot_c 85.0 °C, critical_c 85.0 °C\n"
                           "Hint: raise critical_c (at most the passive trip 99 °C - a margin), or leave it out to"
                           " derive it from the trip points"),
    ({"critical_margin_c": 0.0}, "supervisor: critical_margin_c must be above 0 °C\nNote: critical_margin_c = 0.0\n"
                                 "Hint: the default is 5.0"),
    ({"power_resume_mw": 1000.0}, "supervisor: power_resume_mw is set but power_budget_mw is off\n"
                                  "Note: power_resume_mw = 1000.0\n"
                                  "Hint: set power_budget_mw too, or remove power_resume_mw"),
    ({"power_budget_mw": 0.0}, "supervisor: power_budget_mw must be above 0 mW\nNote: power_budget_mw = 0.0\n"
                               "Hint: give the module's budget in mW (e.g. 20000 for 20 W), or null to turn it off"),
    ({"power_budget_mw": 20000.0, "power_resume_mw": 0.0},
     "supervisor: power_resume_mw must be above 0 and below power_budget_mw\n"
     "Note: power_resume_mw 0.0 mW, power_budget_mw 20000.0 mW\n"
     "Hint: e.g. 18000 (90 % of the budget, the default when left out)"),
    ({"dwell_s": 0.0}, "supervisor: dwell_s must be above 0 s\nNote: dwell_s = 0.0\nHint: the default is 30 s"),
    ({"confirm_s": -1.0}, "supervisor: confirm_s must be 0 s or more\nNote: confirm_s = -1.0\n"
                          "Hint: the default is 2.0 s"),
    ({"critical_rate_scale": 0.0}, "supervisor: critical_rate_scale must be above 0 and at most 1\n"
                                   "Note: critical_rate_scale = 0.0\n"
                                   "Hint: e.g. 0.5 halves each task's frame rate in CRITICAL"),
    ({"pause_below_priority": 102}, "supervisor: pause_below_priority must be an integer from 0 to 101\n"
                                    "Note: pause_below_priority = 102\n"
                                    "Hint: 0 pauses no task, 101 pauses every task; the default is 50"),
]


@pytest.mark.parametrize("values, rendered", REFUSED, ids=[next(iter(v)) + str(i) for i, (v, _) in enumerate(REFUSED)])
def test_each_broken_rule_says_what_the_values_and_the_fix(values: dict, rendered: str) -> None:
    with pytest.raises(ConfigError) as info:
        SupervisorConfig(**values)
    assert info.value.render() == rendered


@pytest.mark.parametrize("values", [
    {"critical_c": 85.001}, {"critical_margin_c": 0.001, "critical_hysteresis_c": 0.001},
    {"power_budget_mw": 0.5, "power_resume_mw": 0.25}, {"power_budget_mw": 20000.0, "power_resume_mw": 19999.0},
    {"dwell_s": 0.001}, {"confirm_s": 0.0, "pause_after_s": 0.0}, {"critical_rate_scale": 1.0},
    {"critical_rate_scale": 0.001}, {"pause_below_priority": 0}, {"pause_below_priority": 101},
    {"power_budget_mw": None, "power_resume_mw": None}, {"critical_c": None},
], ids=str)
def test_the_edges_of_each_range_are_accepted(values: dict) -> None:
    config = SupervisorConfig(**values)
    assert all(getattr(config, name) == value for name, value in values.items())


@pytest.mark.parametrize("values", [{"critical_hysteresis_c": 0.0}, {"pause_after_s": -0.001},
                                    {"critical_rate_scale": 1.001}, {"pause_below_priority": -1},
                                    {"pause_below_priority": 50.0}, {"power_budget_mw": 1.0, "power_resume_mw": 1.0}],
                         ids=str)
def test_just_past_each_edge_is_refused(values: dict) -> None:
    with pytest.raises(ConfigError, match="^supervisor: "):
        SupervisorConfig(**values)


@pytest.mark.parametrize("key,rule", [
    ("pause_below_priority", "supervisor: pause_below_priority must be a finite number (pause_below_priority = an"
                             " integer of about 401 digits)"),
    ("critical_c", "supervisor.critical_c: Input should be a valid number"),
])
def test_an_int_beyond_a_floats_range_is_a_problem_of_the_file(tmp_path: Path, key: str, rule: str) -> None:
    """1 and 400 zeros is an int that YAML builds and pydantic keeps for an int field; the finite-number check met
    it with math.isfinite, which raised OverflowError: a traceback at start."""
    text = BASE + f"supervisor:\n  {key}: 1{'0' * 400}\n"
    with pytest.raises(ConfigError, match=r"1 problem\(s\)") as caught:
        parse_config(text, source="t.yaml", base_dir=tmp_path, environ={})
    assert rule in str(caught.value)


@pytest.mark.parametrize("digits", [401, 5001])
def test_an_int_beyond_a_floats_range_is_refused_from_code(digits: int) -> None:
    with pytest.raises(ConfigError, match=r"^supervisor: hot_c must be a finite number\nNote: hot_c = an integer of"
                                          rf" about {digits} digits\n"):
        SupervisorConfig(hot_c=-(10 ** (digits - 1)))


@pytest.mark.parametrize("kind", [SupervisorConfig, SupervisorSection])
def test_an_unknown_key_from_code_is_a_config_error(kind: type[SupervisorConfig]) -> None:
    """It was pydantic's ValidationError, unlike every other rule checked from code."""
    with pytest.raises(ConfigError, match=r"^supervisor: unknown key 'bogus'\nNote: bogus = 1\nHint: remove it or"
                                          r" fix the spelling; the keys are zone, hot_c, "):
        kind(bogus=1)
    with pytest.raises(ConfigError, match=r"^supervisor: unknown keys 'hotc', 'x'\nNote: hotc = 80, x = 'y'\n"):
        kind(hotc=80, x="y")
