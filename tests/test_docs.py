"""The commands and code in README.md and docs/*.md hold as written (issue 16, "Docs that do not hold").

Checked here, without a daemon or a download: the usage tables (docs/cli.md's names every subcommand) against
`edge.cli.main.build_parser()`; every `edge` line of a fenced example parses with that parser, and says
`.venv/bin/edge` off the board docs; the flags that examples pass to scripts and benchmarks are in their `--help`;
every ```python block compiles, imports what exists and calls it with arguments its signature takes; no example
on a PC page names the board's sockets; the repository paths and links the docs name exist; the trace format is
where TRACE_HINT says. Running the commands for real is done by hand (docs/testing.md, "The tests", says which).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import json
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from edge.cli.main import build_parser
from edge.supervisor.telemetry import common, trace
from tests.support.daemon import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# On a board scripts/provision-target.sh links /usr/local/bin/edge, so the board's page may say `edge`; on a PC
# the venv is not on PATH, so every other page says `.venv/bin/edge`.
BOARD_DOCS = {"docs/operations.md"}
NOT_SHELL = {"python", "yaml", "json", "jsonl"}
# where the systemd unit's daemon binds; on a PC `edge run` binds elsewhere (edge.config.wire.runtime_dir)
BOARD_SOCKETS = "ipc:///run/edge/"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
# a path in the repository: not after /, ~, $ or } (those are /etc/edge/..., ~/.cache/edge/..., $EDGE_CACHE/...)
REPO_PATH = re.compile(r"(?<![\w./~$}-])(?:edge|scripts|benchmarks|docs|systemd|tests|engines)/[\w.-]+(?:/[\w.-]+)*")
OUTPUTS = "benchmarks/results"           # what the benchmarks write, not in git
TOOL = re.compile(r"(?:scripts/[\w-]+\.sh|benchmarks/[\w-]+\.py)")
# test.sh hands its arguments to pytest (its --help would be pytest's, after the whole set-up and lint)
HELP_OF = {"scripts/test.sh": [sys.executable, "-m", "pytest", "--help"]}


@dataclasses.dataclass
class Page:
    name: str                                    # relative to the repository, e.g. docs/protocol.md
    blocks: list[tuple[int, str, list[str]]]     # fenced blocks: (line of the opening fence, language, lines)
    prose: list[tuple[int, str]]                 # the lines outside them: (line number, line)


def read(path_name: str) -> Page:
    page = Page(path_name, [], [])
    block: list[str] | None = None
    for number, line in enumerate((ROOT / path_name).read_text(encoding="utf-8").splitlines(), start=1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence and block is None:
            block = []
            page.blocks.append((number, fence.group(1), block))
        elif fence:
            block = None
        elif block is not None:
            block.append(line)
        else:
            page.prose.append((number, line))
    return page


PAGES = [read(path.relative_to(ROOT).as_posix()) for path in DOCS]


def shell_lines(page: Page) -> Iterator[tuple[int, str]]:
    """(line number, line) of the fenced shell examples, a trailing backslash joining the next line."""
    for start, language, lines in page.blocks:
        if language in NOT_SHELL:
            continue
        joined, first = "", 0
        for number, line in enumerate((line.strip() for line in lines), start=start + 1):
            first = first or number
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            yield first, joined + line
            joined, first = "", 0


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, without the VAR=value words and `sudo` before each."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:                           # an unbalanced quote: not shell (a diagram, a hex dump)
        return []
    commands: list[list[str]] = [[]]
    for word in words:
        if word in SEPARATORS:
            commands.append([])
        elif commands[-1] or not (word == "sudo" or re.fullmatch(r"[A-Za-z_]\w*=\S*", word)):
            commands[-1].append(word)
    return [command for command in commands if command]


def examples(page: Page, *, inline: bool) -> Iterator[tuple[str, list[str]]]:
    """("FILE:LINE", words) of each command in the page's fenced shell blocks, and with `inline` of its inline
    code spans too."""
    lines = list(shell_lines(page))
    if inline:
        lines += [(number, span) for number, line in page.prose for span in re.findall(r"`([^`]+)`", line)]
    for number, line in lines:
        for words in simple_commands(line):
            yield f"{page.name}:{number}", words


def tool(words: list[str]) -> tuple[str, list[str]] | None:
    """(script or benchmark, its arguments) when `words` run one: scripts/X.sh ..., python benchmarks/X.py ..."""
    for index, word in enumerate(words[:2]):
        if TOOL.fullmatch(word) and (index == 0 or re.search(r"python[\d.]*$", words[0])):
            return word, words[index + 1:]
    return None


def parse_error(args: list[str]) -> str | None:
    """argparse's complaint about `edge ARGS`, None when they parse."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        return stderr.getvalue().strip().splitlines()[-1] if exc.code else None
    return None


def subcommand(words: list[str]) -> argparse.ArgumentParser:
    """The parser of `edge SUB [SUB2]` named by the first words of a synopsis."""
    parser = build_parser()
    for word in words[1:]:
        choices = next((action.choices for action in parser._actions if action.choices
                        and isinstance(action.choices, dict)), {})
        if word not in choices:
            break
        parser = choices[word]
    return parser


@functools.cache
def help_text(name: str) -> subprocess.CompletedProcess[str]:
    command = HELP_OF.get(name) or [*([] if name.endswith(".sh") else [sys.executable]), str(ROOT / name), "--help"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def synopses(page: Page) -> Iterator[tuple[int, str]]:
    """(line number, synopsis) of each `edge ...` in the first cell of a usage table's row: a table whose first
    column is headed "command" (a troubleshooting table's `edge status` is no synopsis)."""
    header, previous = None, 0
    for number, line in page.prose:
        cells = re.split(r"(?<!\\)\|", line)
        if len(cells) < 3:
            header = None
            continue
        if header is None or number != previous + 1:
            header = cells[1].strip()
        previous = number
        if header == "command" and cells[1].strip().startswith("`edge "):
            for synopsis in re.findall(r"`(edge [^`]+)`", cells[1]):
                yield number, synopsis.replace("\\|", "|")


def test_usage_tables_name_every_flag_of_each_subcommand() -> None:
    problems = []
    for page in PAGES:
        for number, synopsis in synopses(page):
            parser = subcommand(synopsis.split())
            named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", synopsis))
            flags = {option for action in parser._actions for option in action.option_strings
                     if option.startswith("--")} - {"--help"}
            if named - flags:
                problems.append(f"{page.name}:{number}: `{synopsis}`: {parser.prog} has no"
                                f" {', '.join(sorted(named - flags))}")
            if flags - named:
                problems.append(f"{page.name}:{number}: `{synopsis}` leaves out {', '.join(sorted(flags - named))}")
    assert not problems, "\n".join(problems)


def test_the_command_reference_has_a_synopsis_of_every_subcommand() -> None:
    def leaves(parser: argparse.ArgumentParser) -> Iterator[str]:
        choices = next((action.choices for action in parser._actions if isinstance(action.choices, dict)), {})
        for sub in choices.values():
            yield from leaves(sub) if any(isinstance(action.choices, dict) for action in sub._actions) else [sub.prog]
    reference = next(page for page in PAGES if page.name == "docs/cli.md")
    documented = {subcommand(synopsis.split()).prog for _, synopsis in synopses(reference)}
    assert sorted(set(leaves(build_parser())) - documented) == []


def test_edge_examples_parse_and_name_the_venv_on_a_pc() -> None:
    problems = []
    for page in PAGES:
        for where, words in examples(page, inline=False):
            if words[0] != "edge" and not words[0].endswith("bin/edge"):
                continue
            if words[0] == "edge" and page.name not in BOARD_DOCS:
                problems.append(f"{where}: bare `edge` (the venv is not on PATH on a PC: .venv/bin/edge)")
            if page.name not in BOARD_DOCS and any(word.startswith(BOARD_SOCKETS) for word in words):
                problems.append(f"{where}: {BOARD_SOCKETS}... is the board's socket; on a PC leave the default")
            error = parse_error(words[1:])
            if error:
                problems.append(f"{where}: `{shlex.join(words)}`: {error}")
    assert not problems, "\n".join(problems)


def test_scripts_and_benchmarks_take_the_flags_the_examples_pass() -> None:
    problems = []
    for page in PAGES:
        for where, words in examples(page, inline=True):
            found = tool(words)
            if found is None:
                continue
            name, args = found
            if any(arg.startswith("[") for arg in args):
                problems.append(f"{where}: `{shlex.join(words)}` is a synopsis ([...]): write the command")
            flags = [arg.strip("[").split("=")[0] for arg in args if arg.strip("[").startswith("-") and arg != "-"]
            if not flags or not (ROOT / name).is_file():
                continue                         # a missing file: test_named_paths_and_links_exist says so
            result = help_text(name)
            if result.returncode != 0:
                problems.append(f"{where}: `{name} --help` exited {result.returncode}: {result.stderr.strip()[-300:]}")
                continue
            for flag in flags:
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout):
                    problems.append(f"{where}: `{shlex.join(words)}`: {name} --help has no {flag}")
    assert not problems, "\n".join(problems)


def call_problems(tree: ast.AST, names: dict[str, object]) -> Iterator[str]:
    """Calls of imported functions and classes whose arguments their signature does not take."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names):
            continue
        if any(isinstance(arg, ast.Starred) for arg in node.args) or any(kw.arg is None for kw in node.keywords):
            continue
        try:
            inspect.signature(names[node.func.id]).bind(*node.args, **{kw.arg: kw.value for kw in node.keywords})
        except TypeError as exc:
            yield f"line {node.lineno}: {node.func.id}(...): {exc}"


def test_python_blocks_compile_and_use_what_exists() -> None:
    problems = []
    for page in PAGES:
        for start, language, lines in page.blocks:
            if language != "python":
                continue
            where = f"{page.name}:{start}"
            try:
                tree = ast.parse(textwrap.dedent("\n".join(lines)), filename=where)
            except SyntaxError as exc:
                problems.append(f"{where}: does not compile: {exc}")
                continue
            names: dict[str, object] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        if not hasattr(module, alias.name):
                            problems.append(f"{where}: {node.module} has no {alias.name}")
                        else:
                            names[alias.asname or alias.name] = getattr(module, alias.name)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)
            problems += [f"{where}: {problem}" for problem in call_problems(tree, names)]
            if page.name not in BOARD_DOCS and any(isinstance(node, ast.Constant) and str(node.value).startswith(
                    BOARD_SOCKETS) for node in ast.walk(tree)):
                problems.append(f"{where}: {BOARD_SOCKETS}... receives nothing on a PC; use the default endpoint")
    assert not problems, "\n".join(problems)


def test_named_paths_and_links_exist() -> None:
    problems = []
    for page in PAGES:
        lines = page.prose + list(shell_lines(page))
        for number, line in lines:
            for path in REPO_PATH.findall(line):
                path = path.rstrip(".")
                if not path.startswith(OUTPUTS) and not (ROOT / path).exists():
                    problems.append(f"{page.name}:{number}: {path} is not in the repository")
            for target in re.findall(r"\]\(([^)#\s]+)", line):
                if "://" not in target and not (ROOT / page.name).parent.joinpath(target).exists():
                    problems.append(f"{page.name}:{number}: the link to {target} leads nowhere")
    assert not problems, "\n".join(problems)


def test_the_trace_hint_points_at_the_documented_format(tmp_path: Path) -> None:
    pointer = re.search(r'(docs/[\w-]+\.md), "([^"]+)"', trace.TRACE_HINT)
    assert pointer, f"the hint names no page and section of the docs: {trace.TRACE_HINT}"
    doc, title = pointer.groups()
    text = (ROOT / doc).read_text(encoding="utf-8")
    section = re.search(rf"^## [\d. ]*{re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S).group(1)
    facts = [f"`{key}`" for key in sorted(trace.TRACE_KEYS)] + [
        f"{trace.TRACE_MAX_BYTES // 2**20} MiB", f"{trace.TRACE_MAX_LINE_BYTES // 2**10} KiB",
        "{:g}..{:g}".format(*common.PLAUSIBLE_C).replace("-", "−")]
    assert [fact for fact in facts if fact not in section] == []
    example = re.search(r"```jsonl\n(.*?)```", section, re.S).group(1)
    (tmp_path / "hot.jsonl").write_text(example, encoding="utf-8")
    samples = trace.load_trace(tmp_path / "hot.jsonl")       # the example is a valid trace
    used = set().union(*(json.loads(line) for line in example.splitlines()))
    assert len(samples) > 1 and used == trace.TRACE_KEYS
