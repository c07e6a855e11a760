"""The precisions a task's variants come in, the order a task prefers them in, and the modes a task may be set to
(auto: the supervisor chooses)."""
from __future__ import annotations

import typing
from typing import Literal

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)     # every precision, in the order lists show them
PREFERENCE = ("fp16", "fp32", "int8")    # best first: a task starts on, and NORMAL runs, the first one it has
Mode = Literal["auto", "fp32", "fp16", "int8"]    # auto: the supervisor chooses
MODES: tuple[str, ...] = typing.get_args(Mode)
