"""Logging set-up: `component | message`, no timestamps under journald."""
from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")


class _ComponentFormatter(logging.Formatter):
    """Formats `component | message`, the component being the logger name below `edge.`."""

    def __init__(self, *, timestamps: bool) -> None:
        fmt = "%(asctime)s %(levelname)-7s %(component)-10s | %(message)s" if timestamps else (
            "%(levelname)-7s %(component)-10s | %(message)s")
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        record.component = name[len("edge."):] if name.startswith("edge.") else name
        return super().format(record)


def setup_logging(level: str = "info") -> None:
    """Configure the `edge` logger hierarchy once; journald (JOURNAL_STREAM) adds its own timestamps."""
    timestamps = "JOURNAL_STREAM" not in os.environ
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ComponentFormatter(timestamps=timestamps))
    root = logging.getLogger("edge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(component: str) -> logging.Logger:
    """Logger for one component (`edge.<component>`)."""
    return logging.getLogger(f"edge.{component}")
