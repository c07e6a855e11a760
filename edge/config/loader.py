"""Reading a config: the file (bounded, UTF-8, YAML without surprises), ${NAME} from the environment, EDGE_*
overrides, then the schema (edge.config.schema) and the rules across keys (edge.config.rules); every problem
is reported at once, in a ConfigError that names key path, value, rule and hint.

Strings may use ${NAME} environment variables; ${EDGE_CACHE} defaults to the asset cache.
Environment overrides (per machine): ENV_OVERRIDES, e.g. EDGE_RESULTS_ENDPOINT -> output.results. Errors do not
print values from the environment (see `_render`).

The YAML is read with limits a config never reaches (size, nesting, what aliases expand to) and a key
twice in one mapping is an error, so a hostile or broken file is refused at once with a ConfigError.
"""
from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edge import files
from edge.config.cameras import redact
from edge.config.rules import Problem, key_path, rule_problems
from edge.config.schema import Config
from edge.errors import ConfigError

ENV_OVERRIDES = {"EDGE_RESULTS_ENDPOINT": ("output", "results"), "EDGE_CONTROL_ENDPOINT": ("control", "endpoint"),
                 "EDGE_TELEMETRY": ("supervisor", "telemetry"), "EDGE_LOG_LEVEL": ("logging", "level"),
                 "EDGE_METRICS_LISTEN": ("metrics", "listen")}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_CONFIG_BYTES = 1 << 20       # a config is a few kB
MAX_DEPTH = 32                   # levels of nesting, aliases copied out (a config has about 5)
MAX_VALUES = 100_000             # values (keys, scalars, lists, mappings), aliases copied out (a config: hundreds)
SHOWN_ENV = frozenset({"EDGE_LOG_LEVEL", "EDGE_CACHE"})   # a log level and a directory: printed in errors
MIN_HIDDEN = 4                   # environment values this long are hidden in every problem, shorter at their key
UNBUILDABLE = (ValueError, OverflowError, LookupError, AttributeError)   # what PyYAML's scalar constructors raise
                                 # for text they cannot build (int("abc"), a 13th month, `!!bool maybe`, `!!int ""`)


_Hidden = dict[tuple[Any, ...], list[tuple[str, str]]]     # key path -> (text from the environment, shown instead)


def _render(problem: Problem, overridden: typing.Mapping[tuple[Any, ...], str], hidden: _Hidden) -> str:
    """One line of the ConfigError, without the values that came from the environment.

    Values from the environment are not printed: they are how secrets get into a config
    (`uri: rtsp://cam:${CAM_PASS}@host/stream`), and error messages end up in logs and bug reports. Where
    a problem's key, or a key below it, holds a string that used `${NAME}`, its rule and value show that
    string as written in the file, with `${NAME}` in place of the variable's value; where an EDGE_*
    override set the key, they show `${EDGE_...}` in place of its value. A rule may quote another key's
    value (an undefined camera lists the ids defined), so a value of MIN_HIDDEN characters or more is
    replaced in every problem; a shorter one only in its own key's (elsewhere a `1` would turn every 1 in
    the message into `${NAME}`). Printed as they are: EDGE_LOG_LEVEL and EDGE_CACHE (a log level and a
    directory, edge's own settings: SHOWN_ENV), and an unset variable (it has no value).

    Every string of the value is shown redacted (edge.config.cameras.redact), so a password written into a
    camera URI or an endpoint is not printed either, whatever key holds it (`cameras: [rtsp://u:pw@cam]`
    is a list where a mapping belongs); a rule that quotes a URI redacts it itself.
    """
    loc = problem.loc
    where = key_path(loc) + (f" (from ${overridden[loc]})" if loc in overridden else "")
    secrets = _secrets_at(loc, hidden)
    own = any(at[:len(loc)] == loc or loc[:len(at)] == at for at in hidden)
    not_shown = "; values from the environment not shown" if own else ""
    value = f" (value: {_scrub(problem.value, secrets, redacting=True)!r:.120}{not_shown})" \
        if problem.show_value else ""
    return f"{where}: {_scrub(problem.rule, secrets)}{value}. Hint: {problem.hint}"


def _secrets_at(loc: tuple[Any, ...], hidden: _Hidden) -> list[tuple[str, str]]:
    """What to hide in a problem at `loc`: the environment's text at that key, below or above it, and any of
    MIN_HIDDEN characters or more; longest first (a whole expanded string before the variable values inside
    it), also as a rule quotes a URI (redacted) and as repr() escapes it."""
    pairs = [pair for at, some in hidden.items() for pair in some
             if at[:len(loc)] == loc or loc[:len(at)] == at or len(pair[0]) >= MIN_HIDDEN]
    pairs += [(redact(text), shown) for text, shown in pairs if redact(text) != text]
    pairs += [(repr(text)[1:-1], shown) for text, shown in pairs if repr(text)[1:-1] != text]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def _scrub(value: Any, secrets: list[tuple[str, str]], *, redacting: bool = False) -> Any:
    """`value` (a string, or lists and mappings of them) with every secret replaced by what is shown instead;
    `redacting`: with every string redacted too."""
    if isinstance(value, str):
        for text, shown in secrets:
            value = value.replace(text, shown)
        return redact(value) if redacting else value
    if isinstance(value, list):
        return [_scrub(v, secrets, redacting=redacting) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, secrets, redacting=redacting) for k, v in value.items()}
    return value


def load_config(path: str | Path, *, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read, expand, override and validate a config file. ConfigError lists every problem."""
    path = Path(path)
    env = dict(os.environ if environ is None else environ)
    return parse_config(_read(path), source=str(path), base_dir=path.resolve().parent, environ=env)


def _read(path: Path) -> str:
    """The file's text. Only a regular file is read (a FIFO would block the daemon for good, SIGTERM included,
    until someone wrote to it), and at most MAX_CONFIG_BYTES + 1 bytes of it."""
    hint = "pass an existing file with --config; `edge demo` uses the packaged demo config"
    try:
        data = files.read_regular(path, MAX_CONFIG_BYTES)
    except files.NotRegularFile as exc:
        raise ConfigError(f"config {files.shown(path)} {exc}", hint="pass the config file itself (YAML text)") from None
    except files.FileTooLarge as exc:
        _check_size(exc.size, str(path))
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read config file {files.shown(path)}: {exc.strerror}", hint=hint) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text",
                          note=f"byte {exc.start} ({data[exc.start:exc.start + 1]!r}): {exc.reason}",
                          hint="save the config as UTF-8 (a config is YAML text)") from None


def _check_size(size: int | None, source: str) -> None:
    """Refuse a config over MAX_CONFIG_BYTES; `size` None: more than that was read, and reading stopped."""
    if size is None or size > MAX_CONFIG_BYTES:
        has = f"{size} bytes" if size is not None else f"more than {MAX_CONFIG_BYTES} bytes (reading stopped there)"
        raise ConfigError(f"config {source} is larger than {MAX_CONFIG_BYTES >> 20} MiB",
                          note=f"it has {has}; the limit is {MAX_CONFIG_BYTES} bytes",
                          hint="pass the config file itself (a few kB of YAML), not a model, a video or a device")


def parse_config(text: str, *, source: str, base_dir: Path, environ: typing.Mapping[str, str]) -> Config:
    _check_size(len(text) if len(text) > MAX_CONFIG_BYTES else len(text.encode("utf-8", "surrogatepass")), source)
    raw = _parse_yaml(text, source)
    unset: list[Problem] = []
    hidden: _Hidden = {}
    raw = _expand(raw, environ, [], unset, hidden)
    overridden = _apply_overrides(raw, environ, hidden)
    problems = []
    try:
        config = Config.model_validate(raw, context={"base_dir": base_dir, "rules_checked": True})
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
    problems += rule_problems(raw)             # rules across keys: reported with the rest, not after
    # a value with an unset variable is reported as that, not also as whatever its unexpanded text breaks
    problems = unset + [p for p in problems if p.loc not in {u.loc for u in unset}]
    if problems:
        lines = [_render(p, overridden, hidden) for p in sorted(problems, key=_file_order)]
        raise ConfigError(f"invalid config {source}: {len(lines)} problem(s)", note="\n  " + "\n  ".join(lines),
                          hint="see the config reference, docs/config.md")
    return config


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        loader = _Loader(text, source)          # its reader refuses control characters here already
    except yaml.reader.ReaderError as exc:
        lines = re.split(r"\r\n|\r|\n", text[:exc.position])      # YAML's line breaks, CR alone included
        raise ConfigError(f"config {source} is not valid YAML at line {len(lines)}, column {len(lines[-1]) + 1}: the"
                          f" character {chr(exc.character)!r} (U+{exc.character:04X}) is not allowed",
                          note="YAML text takes no control characters other than tab, line feed and carriage return,"
                          " and no non-characters such as U+FFFE",
                          hint="remove it (an editor or a copy from a terminal put it there)") from None
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config {source} is not valid YAML{where}: {problem}",
                          hint="check indentation and quoting near that line") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source} must be a YAML mapping at the top level",
                          note=f"found {type(raw).__name__}: {raw!r:.80}",
                          hint="start from the packaged demo config (edge/data/demo.yaml)")
    return raw


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing (with a ConfigError, before any object is built) what no config needs:
    nesting deeper than MAX_DEPTH, aliases that copy out to more than MAX_VALUES values (a "billion laughs"
    file of a few hundred bytes expands to 10^9), an alias inside the block its own anchor marks, and a key
    twice in one mapping (YAML would silently keep the last). A few anchors and aliases, and `<<:` merge
    keys, load as usual."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.nodes = 0                                      # values composed so far, aliases not copied out
        self.aliases = 0
        self.measured: dict[int, tuple[int, int]] = {}     # id(node) -> (values, depth), aliases copied out
        self.open: set[int] = set()                         # nodes being measured (an alias to one is a loop)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.aliases += self.check_event(yaml.AliasEvent)
        self.nodes += 1
        self.depth += 1
        try:
            self._check_composed()
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _check_composed(self) -> None:
        """Refuse as soon as the text alone is too deep (the composer recurses) or has too many values."""
        line = self.peek_event().start_mark.line + 1
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"config {self.source} nests deeper than {MAX_DEPTH} levels at line {line}",
                              note="a config nests about 5 levels (tasks[0].params.nms_iou)",
                              hint="check the brackets and indentation near that line")
        if self.nodes > MAX_VALUES:
            raise ConfigError(f"config {self.source} has more than {MAX_VALUES} values (the limit is passed at line"
                              f" {line})", note="a config has a few hundred values (keys, scalars, lists, mappings)",
                              hint="pass the config file itself, not data; a config lists cameras and tasks")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value built from its node; one that PyYAML cannot build (`dwell_s: 2001-13-45`, a date, has no 13th
        month; `!!int abc`; an int of more digits than Python converts) is a ConfigError naming its line. The
        scalar constructors raise Python's own errors there, not a YAMLError."""
        try:
            return super().construct_object(node, deep)
        except UNBUILDABLE as exc:
            raise self._unbuildable(node, exc) from None

    def _unbuildable(self, node: yaml.Node, exc: Exception) -> ConfigError:
        mark, tag = node.start_mark, node.tag.replace("tag:yaml.org,2002:", "!!")
        value = redact(node.value) if isinstance(node, yaml.ScalarNode) else None     # `!!int rtsp://u:pw@cam`
        text = "the value" if value is None else repr(value if len(value) <= 40 else f"{value[:40]}...")
        reason = str(exc).partition("; use sys.set_int_max_str_digits")[0]      # Python's advice, not the user's
        return ConfigError(f"config {self.source} is not valid YAML at line {mark.line + 1}, column {mark.column + 1}:"
                           f" {text} is no valid {tag}",
                           note=reason if isinstance(exc, (ValueError, OverflowError)) else None,
                           hint="write the value the key expects, or quote it to keep it as text (YAML reads"
                           " 2001-02-03 as a date, 0x1F and 1_000 as numbers)")

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        self._measure(node, ())
        return node

    def _measure(self, node: yaml.Node, path: tuple[Any, ...]) -> tuple[int, int]:
        """(values, depth) of `node` with every alias copied out; checks the keys of each mapping once."""
        if id(node) in self.measured:
            return self.measured[id(node)]
        if id(node) in self.open:
            raise ConfigError(f"config {self.source}: {key_path(path)} is an alias (*name) inside the block that its"
                              f" anchor (&name) marks at line {node.start_mark.line + 1}",
                              note="that block would contain itself without end",
                              hint="use an alias only after the block of its anchor has ended")
        self.open.add(id(node))
        values, depth = 1, 1
        for child, child_path in self._children(node, path):
            child_values, child_depth = self._measure(child, child_path)
            values, depth = min(values + child_values, MAX_VALUES + 1), max(depth, child_depth + 1)
        self.open.discard(id(node))
        self._check_expansion(node, path, values, depth)
        self.measured[id(node)] = values, depth
        return values, depth

    def _children(self, node: yaml.Node, path: tuple[Any, ...]) -> list[tuple[yaml.Node, tuple[Any, ...]]]:
        if isinstance(node, yaml.SequenceNode):
            return [(child, path + (i,)) for i, child in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            return []
        self._check_keys(node, path)
        children = []
        for key, value in node.value:
            children += [(key, path), (value, path + (key.value if isinstance(key, yaml.ScalarNode) else "?",))]
        return children

    def _check_expansion(self, node: yaml.Node, path: tuple[Any, ...], values: int, depth: int) -> None:
        line = f"line {node.start_mark.line + 1}" + (f" ({key_path(path)})" if path else "")
        if values > MAX_VALUES:
            raise ConfigError(f"config {self.source} expands to more than {MAX_VALUES} values: the value at {line}"
                              " alone does, with its aliases copied out",
                              note=f"the file has {self.aliases} alias(es) (*name), each a copy of the block that"
                              " its anchor (&name) marks; a config has a few hundred values",
                              hint="write repeated blocks out, or alias only small ones (a shared `params` block)")
        if len(path) + depth > MAX_DEPTH:
            raise ConfigError(f"config {self.source} nests deeper than {MAX_DEPTH} levels at {line}, with its"
                              " aliases copied out", note="a config nests about 5 levels (tasks[0].params.nms_iou)",
                              hint="alias only blocks that do not themselves contain aliases of deep blocks")

    def _check_keys(self, node: yaml.MappingNode, path: tuple[Any, ...]) -> None:
        """A key twice in one mapping is an error naming both lines. Keys that `<<: *name` merges in are not
        in `node` yet (they may be overridden); `<<` twice is an error too (write `<<: [*a, *b]`)."""
        first: dict[Any, yaml.Mark] = {}
        for key, _ in node.value:
            same, mark = self._key(key), key.start_mark
            if same in first:                               # only a scalar key can equal another
                where = _lines(first[same], mark)
                raise ConfigError(f"config {self.source}: key {key.value!r} appears twice"
                                  f"{' in ' + key_path(path) if path else ''}: {where}",
                                  note=f"YAML would keep the value at line {mark.line + 1} and drop the one at"
                                  f" line {first[same].line + 1} without a word",
                                  hint="delete one of the two, or merge them into one")
            first[same] = mark

    def _key(self, key: yaml.Node) -> Any:
        """What the key becomes, so that `1` and `0x1`, or `true` and `yes`, are one key; its text where it
        cannot be built here (the constructor reports that later). A list or mapping key is never equal."""
        if not isinstance(key, yaml.ScalarNode):
            return "node", id(key)
        build = self.yaml_constructors.get(key.tag)
        try:
            value = build(self, key) if build is not None else None
            hash(value)
        except (yaml.YAMLError, TypeError, *UNBUILDABLE):
            build = None
        return ("built", value) if build is not None else (key.tag, key.value)


def _lines(one: yaml.Mark, two: yaml.Mark) -> str:
    """`line 3 and line 17`, or `line 4, columns 14 and 25` (1-based)."""
    if one.line == two.line:
        return f"line {one.line + 1}, columns {one.column + 1} and {two.column + 1}"
    return f"line {one.line + 1} and line {two.line + 1}"


def _expand(node: Any, environ: typing.Mapping[str, str], path: list[Any], unset: list[Problem],
            hidden: _Hidden) -> Any:
    """`${NAME}` from the environment in every string; an unset one is left as written and becomes a
    problem reported with all the others. What a variable put into a string is noted in `hidden` (not
    printed in errors, see Problem) unless SHOWN_ENV names the variable."""
    if isinstance(node, dict):
        return {k: _expand(v, environ, path + [k], unset, hidden) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, path + [i], unset, hidden) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    used: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "EDGE_CACHE" and not environ.get(name):
            return str(files.default_cache_dir())
        if name not in environ:
            unset.append(Problem(tuple(path), f"uses ${{{name}}}, which is not set", node,
                                 f"export {name}=... or write the value directly"))
            return match.group(0)
        used.append(name)
        return environ[name]
    text = _VAR.sub(sub, node)
    secrets = [(environ[name], f"${{{name}}}") for name in used if name not in SHOWN_ENV and environ[name]]
    if secrets:
        hidden[tuple(path)] = [(text, node), *secrets]
    return text


def _apply_overrides(raw: dict[str, Any], environ: typing.Mapping[str, str],
                     hidden: _Hidden) -> dict[tuple[str, ...], str]:
    """EDGE_* variables over the file's values; what they set is noted in `hidden` unless SHOWN_ENV names them."""
    overridden = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        if environ.get(var):
            block = raw.setdefault(section, {})
            if isinstance(block, dict):
                block[key] = environ[var]
                overridden[(section, key)] = var
                if var not in SHOWN_ENV:
                    hidden[(section, key)] = [(environ[var], f"${{{var}}}")]
    return overridden


_HINTS = {
    "missing": "add this key",
    "extra_forbidden": "remove it or fix its spelling",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "use letters, digits, '_' or '-' (1-64 characters; it is part of topic names)",
    "int": "write a whole number",
    "float": "write a number",
    "bool": "write true or false",
    "string": "write a string (quote it if YAML reads it as something else)",
    "list": "write a YAML list, e.g. [a, b]",
    "dict": "write a YAML mapping (key: value lines)",
    "model": "write a YAML mapping (key: value lines)",
    "too": "add or remove entries as the rule says",
    "camera_twice": "list each camera once",
}


def _describe(err: Any) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    rule = err["msg"].removeprefix("Value error, ")
    hint = _HINTS.get(err["type"]) or _HINTS.get(err["type"].split("_")[0], "change the value as the rule says")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint += f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
    whole_block = isinstance(err["input"], dict)          # a rule across keys: the rule names the values
    return Problem(loc, rule, err["input"], hint, show_value=err["type"] != "missing" and not whole_block)


def _file_order(problem: Problem) -> tuple[int, int]:
    """Sort key: by top-level section, then by list entry (stable, so rules follow the schema's problems)."""
    sections = list(Config.model_fields)
    section, index = (list(problem.loc) + [None, None])[:2]
    rank = sections.index(section) if section in sections else (-1 if section is None else len(sections))
    return rank, index if isinstance(index, int) else -1


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at `loc`, for 'unknown key' hints."""
    kind: Any = Config
    for part in loc:
        if isinstance(part, int):
            kind = typing.get_args(kind)[0] if typing.get_args(kind) else kind
            continue
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)) or part not in kind.model_fields:
            return []
        kind = kind.model_fields[part].annotation
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return []
