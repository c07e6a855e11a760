"""What the command modules share: argument types for seconds and counts, the control endpoint, and the
signal handler that ends a tool like Ctrl-C does."""
from __future__ import annotations

import argparse
import math
import os
from typing import Any

MAX_SECONDS = 86_400       # a day; ZeroMQ's poll takes milliseconds as a C int (24.8 days: 3e6 s overflowed)


def seconds(text: str) -> float:
    """A time in seconds from 0 to MAX_SECONDS (inf, nan, negatives and huge numbers would wait for ever, not at all,
    or overflow)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_SECONDS:                 # False for nan too
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_SECONDS}, got {text}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 (up to {MAX_SECONDS}), got {text}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def control_endpoint(args: argparse.Namespace) -> str:
    from edge.config.wire import default_control_endpoint

    return args.control or os.environ.get("EDGE_CONTROL_ENDPOINT") or default_control_endpoint()


def terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
