"""Rules across keys of a config (unique names, defined cameras, one model source per task, no NUL).

Pydantic runs a model's "after" validators only when all of its fields are valid, so a rule across keys would be
reported only once everything else is fixed. These rules therefore work on plain data: parse_config applies them
to the raw file (skipping entries of the wrong type: the schema reports those) and reports them together with the
schema's problems; the schema's validators apply them to objects built in code.
"""
from __future__ import annotations

import typing
from typing import Any

from edge.config.precision import PRECISIONS


class Problem(typing.NamedTuple):
    """One problem in a config: key path, rule, value (omitted when the rule names the values), hint. The
    loader prints it without the values that came from the environment (edge.config.loader)."""
    loc: tuple[Any, ...]
    rule: str
    value: Any = None
    hint: str = "change the value as the rule says"
    show_value: bool = True


def raise_problems(problems: list[Problem]) -> None:
    """ValueError naming every problem (a validator's way to report them), if there are any."""
    if problems:
        raise ValueError("; ".join(f"{key_path(p.loc)}: {p.rule}" if p.loc else p.rule for p in problems))


def rule_problems(raw: dict[str, Any]) -> list[Problem]:
    """Every rule across keys, on the raw (expanded) YAML data."""
    cameras = raw.get("cameras") if isinstance(raw.get("cameras"), list) else None
    tasks = raw.get("tasks") if isinstance(raw.get("tasks"), list) else []
    problems = _nul_problems(raw, ())
    problems += reference_rules(cameras, tasks)
    for i, task in enumerate(tasks):
        if isinstance(task, dict):
            problems += task_rules(("tasks", i), task)
    return problems


def _nul_problems(node: Any, loc: tuple[Any, ...]) -> list[Problem]:
    """A string with a NUL ("\\0" in a double-quoted YAML string): no path, URI, endpoint or name can hold one (the
    system calls refuse it), so it is refused here rather than met by a file or socket call later."""
    if isinstance(node, str):
        return [Problem(loc, "contains a NUL character (\\0), which no path, URI, endpoint or name can hold", node,
                        "remove the \\0 escape")] if "\0" in node else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [problem for key, child in children for problem in _nul_problems(child, loc + (key,))]


def reference_rules(cameras: list[Any] | None, tasks: list[Any]) -> list[Problem]:
    """Camera ids and task names are unique; tasks use only defined cameras (unless `cameras` is no list)."""
    problems = _unique("task name", ("tasks", "name"), tasks,
                       "give every task its own name (it is part of topic names)")
    if cameras is None:
        return problems
    problems += _unique("camera id", ("cameras", "id"), cameras, "give every camera its own id")
    ids = list(dict.fromkeys(c["id"] for c in cameras if isinstance(c, dict) and isinstance(c.get("id"), str)))
    for i, task in enumerate(tasks):
        used = task.get("cameras") if isinstance(task, dict) else None
        missing = [c for c in used if isinstance(c, str) and c not in ids] if isinstance(used, list) else []
        if missing:
            name = task["name"] if isinstance(task.get("name"), str) else f"tasks[{i}]"
            problems.append(Problem(("tasks", i, "cameras"), f"task {name!r} uses undefined camera(s) {missing};"
                                    f" defined: {ids}", used, "define the camera under `cameras:` or fix the id"))
    return problems


def _unique(what: str, where: tuple[str, str], entries: list[Any], hint: str) -> list[Problem]:
    section, key = where
    first: dict[str, int] = {}
    problems = []
    for i, entry in enumerate(entries):
        value = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(value, str):
            continue
        if value in first:
            also = key_path((section, first[value], key))
            problems.append(Problem((section, i, key), f"{what} {value!r} is defined more than once (also at {also})",
                                    value, hint))
        first.setdefault(value, i)
    return problems


def task_rules(loc: tuple[Any, ...], task: typing.Mapping[str, Any]) -> list[Problem]:
    """One model source per task; variants not empty; the pinned precision has a file."""
    given = [k for k in ("model", "variants", "engines") if task.get(k) is not None]
    if len(given) != 1:
        return [Problem(loc, "give exactly one of `model` (one ONNX file), `variants` (precision -> file) or"
                        " `engines` (an engine repository directory with manifest.json); given: "
                        + (", ".join(f"`{k}`" for k in given) or "none"),
                        hint="keep one of the three keys" if given else "add one of the three keys",
                        show_value=False)]
    variants, precision = task.get("variants"), task.get("precision")
    if isinstance(variants, dict) and not variants:
        return [Problem(loc + ("variants",), "`variants` is empty; list at least one of fp32, fp16, int8", variants,
                        "add e.g. `fp32: model.onnx`")]
    files = {"fp32": task["model"]} if given == ["model"] else variants if isinstance(variants, dict) else None
    if files is not None and precision in PRECISIONS and precision not in files:
        return [Problem(loc + ("precision",), f"precision {precision!r} has no file; variants are {sorted(files)}",
                        precision, "add that variant or pin a precision that has one")]
    return []


def key_path(parts: typing.Sequence[Any]) -> str:
    """('tasks', 0, 'params') -> tasks[0].params"""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
