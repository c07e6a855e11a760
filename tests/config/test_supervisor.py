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
