"""YAML configuration -> typed objects, with errors that name key path, value, rule and hint.

Strings may use ${NAME} environment variables; ${EDGE_CACHE} defaults to the asset cache.
Environment overrides (per machine): EDGE_RESULTS_ENDPOINT -> output.results,
EDGE_LOG_LEVEL -> logging.level.
"""
from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edge import protocol, sources
from edge.errors import ConfigError

Precision = Literal["fp32", "fp16", "int8"]
ENV_OVERRIDES = {"EDGE_RESULTS_ENDPOINT": ("output", "results"), "EDGE_LOG_LEVEL": ("logging", "level")}
_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def default_cache_dir() -> Path:
    """Where demo assets live: $EDGE_CACHE, else $XDG_CACHE_HOME/edge, else ~/.cache/edge."""
    if os.environ.get("EDGE_CACHE"):
        return Path(os.environ["EDGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Strict):
    id: str = Field(pattern=_NAME)
    uri: str

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str, info: ValidationInfo) -> str:
        parsed = sources.parse_uri(value, base_dir=(info.context or {}).get("base_dir"))
        if parsed.scheme != "file":
            return value
        query = value.partition("?")[2]
        return f"file://{parsed.location}" + (f"?{query}" if query else "")

    @property
    def parsed(self) -> sources.CameraURI:
        return sources.parse_uri(self.uri)


class DetectorParams(_Strict):
    conf_threshold: float = Field(0.3, gt=0, le=1)
    nms_iou: float = Field(0.45, gt=0, le=1)
    max_detections: int = Field(300, ge=1, le=protocol.MAX_DETECTIONS)
    labels: str | None = None


class TaskConfig(_Strict):
    name: str = Field(pattern=_NAME)
    type: Literal["detector"]
    model: str | None = None
    variants: dict[Precision, str] | None = None
    engines: str | None = None
    allow_onnx: bool = True
    precision: Precision | None = None
    cameras: list[str] = Field(min_length=1)
    rate_limit_hz: float = Field(0.0, ge=0)
    priority: int = Field(50, ge=0, le=100)
    enabled: bool = True
    backend: Literal["onnxruntime"] = "onnxruntime"
    threads: int | None = Field(None, ge=1, le=64)
    in_flight: int = Field(2, ge=1, le=8)
    params: DetectorParams = DetectorParams()

    @field_validator("model", "engines")
    @classmethod
    def _model_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @field_validator("variants")
    @classmethod
    def _variant_paths(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        return None if value is None else {k: _resolve(v, info) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_model(self) -> TaskConfig:
        if [self.model, self.variants, self.engines].count(None) != 2:
            raise ValueError("give exactly one of `model` (one ONNX file), `variants` (precision -> file)"
                             " or `engines` (an engine repository directory with manifest.json)")
        if self.variants is not None and not self.variants:
            raise ValueError("`variants` is empty; list at least one of fp32, fp16, int8")
        if self.engines is None and self.precision is not None and self.precision not in self.model_files:
            raise ValueError(f"precision {self.precision!r} has no file; variants are {sorted(self.model_files)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras {self.cameras} lists a camera twice")
        return self

    @property
    def model_files(self) -> dict[str, str]:
        """precision -> ONNX file for `model`/`variants` (empty for `engines`, resolved by edge.bundle)."""
        return {"fp32": self.model} if self.model is not None else dict(self.variants or {})

    @property
    def active_precision(self) -> str:
        """The configured precision, else fp32 when present, else the first variant."""
        files = self.model_files
        if self.precision or self.engines is not None:
            return self.precision or "fp32"
        return "fp32" if "fp32" in files else next(iter(files))


class OutputConfig(_Strict):
    results: str = Field(default_factory=protocol.default_results_endpoint)
    heartbeat_hz: float = Field(1.0, gt=0, le=10)
    queue_size: int = Field(64, ge=1, le=10_000)
    sndhwm: int = Field(100, ge=1, le=100_000)
    labels: bool = False

    @field_validator("results")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return protocol.check_endpoint(value)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Strict):
    version: Literal[1]
    cameras: list[CameraConfig] = Field(min_length=1)
    tasks: list[TaskConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _references(self) -> Config:
        ids = [c.id for c in self.cameras]
        _unique("camera id", ids)
        _unique("task name", [t.name for t in self.tasks])
        for task in self.tasks:
            missing = [c for c in task.cameras if c not in ids]
            if missing:
                raise ValueError(f"task {task.name!r} uses undefined camera(s) {missing}; defined: {ids}")
        return self

    def camera(self, camera_id: str) -> CameraConfig:
        return next(c for c in self.cameras if c.id == camera_id)

    def used_camera_ids(self) -> list[str]:
        """Cameras that at least one enabled task uses, in config order (the others are never opened)."""
        used = {c for t in self.tasks if t.enabled for c in t.cameras}
        return [c.id for c in self.cameras if c.id in used]


def _unique(what: str, values: list[str]) -> None:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} {dupes} defined more than once")


def _resolve(value: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    path = Path(value)
    return str(base / path) if base is not None and not path.is_absolute() else value


# ---------------------------------------------------------------- loading and errors

def load_config(path: str | Path, *, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read, expand, override and validate a config file. ConfigError lists every problem."""
    path = Path(path)
    env = dict(os.environ if environ is None else environ)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}",
                          hint="pass an existing file with --config; `edge demo` uses the packaged demo config"
                          ) from exc
    return parse_config(text, source=str(path), base_dir=path.resolve().parent, environ=env)


def parse_config(text: str, *, source: str, base_dir: Path, environ: typing.Mapping[str, str]) -> Config:
    raw = _parse_yaml(text, source)
    raw = _expand(raw, environ, source, [])
    overridden = _apply_overrides(raw, environ)
    try:
        return Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_describe(err, overridden) for err in exc.errors()]
        raise ConfigError(f"invalid config {source}: {len(problems)} problem(s)", note="\n  " + "\n  ".join(problems),
                          hint="see the config reference in README.md") from None


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config {source} is not valid YAML{where}: {problem}",
                          hint="check indentation and quoting near that line") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source} must be a YAML mapping at the top level",
                          note=f"found {type(raw).__name__}: {raw!r:.80}",
                          hint="start from the packaged demo config (edge/data/demo.yaml)")
    return raw


def _expand(node: Any, environ: typing.Mapping[str, str], source: str, path: list[Any]) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, environ, source, path + [k]) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, source, path + [i]) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "EDGE_CACHE" and not environ.get(name):
            return str(default_cache_dir())
        if name not in environ:
            raise ConfigError(f"config {source}: {_loc(path)} uses ${{{name}}}, which is not set",
                              note=f"value: {node!r}", hint=f"export {name}=... or write the value directly")
        return environ[name]
    return _VAR.sub(sub, node)


def _apply_overrides(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[tuple[str, ...], str]:
    overridden = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        if environ.get(var):
            block = raw.setdefault(section, {})
            if isinstance(block, dict):
                block[key] = environ[var]
                overridden[(section, key)] = var
    return overridden


def _loc(parts: typing.Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


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
}


def _describe(err: Any, overridden: dict[tuple[str, ...], str]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _loc(loc)
    if loc in overridden:
        where += f" (from ${overridden[loc]})"
    rule = err["msg"].removeprefix("Value error, ")
    hint = _HINTS.get(err["type"]) or _HINTS.get(err["type"].split("_")[0], "change the value as the rule says")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint += f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
    whole_block = isinstance(err["input"], dict)          # a rule across keys: the rule names the values
    value = "" if err["type"] == "missing" or whole_block else f" (value: {err['input']!r:.120})"
    return f"{where}: {rule}{value}. Hint: {hint}"


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
