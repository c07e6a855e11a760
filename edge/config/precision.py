"""The precisions a task's variants come in, and the modes a task may be set to (auto: the supervisor chooses)."""
from __future__ import annotations

import typing
from typing import Literal

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
Mode = Literal["auto", "fp32", "fp16", "int8"]    # auto: the supervisor chooses
