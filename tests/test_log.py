"""Log lines are `level component | message`; no timestamps under journald."""
from __future__ import annotations

import re

import pytest

from edge.log import get_logger, setup_logging


def test_component_format_with_timestamps(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info")
    get_logger("camera").info("front lost")
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +camera +\| front lost", line), line


def test_no_timestamps_under_journald(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("warning")
    log = get_logger("publisher")
    log.info("hidden")
    log.warning("queue full")
    assert capsys.readouterr().err == "WARNING publisher  | queue full\n"
