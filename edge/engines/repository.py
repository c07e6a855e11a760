"""Engine repository: one directory per model with a manifest of its variants (`Manifest`), and the resolver
(`resolve`) that picks what a task runs on this device; with the model files' checked reads and atomic writes.

The resolver's rule: a TensorRT plan runs only on the device it was built for (`DeviceKey`: board, L4T release,
TensorRT version, SM) and only when its checksum and source are right; otherwise the ONNX variant when the
config allows it; otherwise a refusal that names every candidate, why it was rejected and how to get one. A
variant that failed its check when it was made is kept under `refused`, without a file. The directory, the
manifest format and the resolver's steps: engines/README.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge import files
from edge.errors import EngineError

MANIFEST = "manifest.json"
SCHEMA = 1
FORMATS = ("onnx", "plan")


@dataclasses.dataclass(frozen=True)
class DeviceKey:
    """What a TensorRT plan is bound to. `input_shapes` and `precision` describe the plan itself; `device_type` is
    the Mender device type of the board that built it ("" without Mender's client), which `edge bundle pack
    --mender` matches against an artifact's device types: it names a fleet's boards, not what a plan can run on,
    so it is not part of `platform()`."""

    board: str
    l4t: str
    tensorrt: str
    sm: str
    precision: str = ""
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    device_type: str = ""

    def platform(self) -> tuple[str, str, str, str]:
        return (self.board, self.l4t, self.tensorrt, self.sm)

    def to_json(self) -> dict[str, Any]:
        return {"board": self.board, "l4t": self.l4t, "tensorrt": self.tensorrt, "sm": self.sm,
                "precision": self.precision, "input_shapes": {n: list(s) for n, s in self.input_shapes},
                "device_type": self.device_type}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceKey:
        shapes = tuple((str(n), tuple(int(v) for v in s)) for n, s in sorted(data.get("input_shapes", {}).items()))
        return cls(str(data["board"]), str(data["l4t"]), str(data["tensorrt"]), str(data["sm"]),
                   str(data.get("precision", "")), shapes, str(data.get("device_type", "")))


def read_board(root: Path = Path("/")) -> str:
    """The board model from the device tree (Jetson), else 'unknown'."""
    try:
        return (root / "proc/device-tree/model").read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return "unknown"


def read_device_type(root: Path = Path("/")) -> str:
    """The Mender device type from the client's /var/lib/mender/device_type (`device_type=...`), else "" (also for
    anything there that is not a small regular file)."""
    try:
        text = files.read_regular(root / "var/lib/mender/device_type", 4096).decode("utf-8", errors="replace")
    except (OSError, files.NotRegularFile, files.FileTooLarge):
        return ""
    match = re.search(r"^device_type=(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def read_l4t(root: Path = Path("/")) -> str:
    """The L4T release ('36.4.3') from /etc/nv_tegra_release, else 'none'."""
    try:
        text = (root / "etc/nv_tegra_release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "none"
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else "unknown"


def load_onnx(path: Path) -> Any:
    """The ONNX model at `path`, checked; EngineError for a missing or broken file."""
    import onnx

    if not path.is_file():
        raise EngineError(f"ONNX file does not exist: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError... for broken files
        raise EngineError(f"cannot load ONNX model {path}: {str(exc).strip()[:300]}",
                          hint="the file is truncated or not an ONNX model; rebuild it") from exc
    return model


def check_writable(path: Path) -> None:
    """Fail before any long work when the output cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EngineError(f"output directory does not exist: {parent}", hint="create it first")
    if path.is_dir():
        raise EngineError(f"output path is a directory: {path}", hint="name the output file, e.g. model.int8.qdq.onnx")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EngineError(f"output path is not writable: {path}", hint="choose another path or fix permissions")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` only when the block succeeds."""
    check_writable(path)
    with files.atomic_path(path) as tmp:
        yield tmp


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Variant:
    precision: str
    format: str
    file: str
    sha256: str
    device: DeviceKey | None = None
    source_sha256: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "format": self.format, "file": self.file,
                               "sha256": self.sha256, **self.extra}
        if self.device is not None:
            out["device"] = self.device.to_json()
        if self.source_sha256 is not None:
            out["source_sha256"] = self.source_sha256
        return out


class Manifest:
    """The variants of one model, stored as manifest.json in the model's repository directory."""

    def __init__(self, root: Path, model: str, variants: list[Variant],
                 refused: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self.model = model
        self.variants = variants
        self.refused = refused or {}     # precision -> {"reason": ..., and what the check measured}

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise EngineError(f"cannot read engine manifest {path}: {exc.strerror}",
                              hint="point the task's `engines:` at a model directory with a manifest.json"
                                   " (`edge assets fetch` makes the demo's)") from exc
        except ValueError as exc:
            raise EngineError(f"engine manifest {path} is not valid JSON: {exc}") from exc
        try:
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
            variants = [_variant(v) for v in data["variants"]]
            refused = {str(r["precision"]): {k: v for k, v in r.items() if k != "precision"}
                       for r in data.get("refused", [])}
            if any(not isinstance(r.get("reason"), str) for r in refused.values()):
                raise ValueError("a refused variant has no reason")
            return cls(Path(root), str(data["model"]), variants, refused)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineError(f"engine manifest {path} is malformed: {exc!r}",
                              hint="regenerate it with the tools (edge assets fetch / edge build)") from exc

    def save(self) -> None:
        data = {"schema": SCHEMA, "model": self.model, "variants": [v.to_json() for v in self.variants],
                "refused": [{"precision": p, **r} for p, r in sorted(self.refused.items())]}
        path = self.root / MANIFEST
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with files.atomic_path(path) as tmp:
                tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise EngineError(f"cannot write the manifest {path}: {exc.strerror}",
                              hint=files.write_hint(exc, path)) from exc

    def refuse(self, precision: str, record: dict[str, Any]) -> None:
        """Record that the ONNX variant of `precision` failed its check (and drop the variant)."""
        self.variants = [v for v in self.variants if not (v.format == "onnx" and v.precision == precision)]
        self.refused[precision] = record

    def put(self, variant: Variant) -> None:
        """Add a variant, replacing one of the same precision, format and device platform."""
        same = lambda v: (v.precision, v.format, v.device and v.device.platform()) == (  # noqa: E731
            variant.precision, variant.format, variant.device and variant.device.platform())
        self.variants = [v for v in self.variants if not same(v)] + [variant]
        if variant.format == "onnx":
            self.refused.pop(variant.precision, None)

    def onnx(self, precision: str) -> Variant | None:
        return next((v for v in self.variants if v.format == "onnx" and v.precision == precision), None)


def _variant(data: dict[str, Any]) -> Variant:
    if data["format"] not in FORMATS:
        raise ValueError(f"unknown variant format {data['format']!r}")
    if not data["sha256"]:
        raise ValueError(f"variant {data['file']!r} has no sha256")
    known = {"precision", "format", "file", "sha256", "device", "source_sha256"}
    return Variant(str(data["precision"]), data["format"], str(data["file"]), str(data["sha256"]),
                   DeviceKey.from_json(data["device"]) if data.get("device") else None,
                   data.get("source_sha256"), {k: v for k, v in data.items() if k not in known})


@dataclasses.dataclass(frozen=True)
class Resolution:
    format: str
    path: Path
    variant: Variant
    rejected: tuple[str, ...]      # why other candidates were not used (for logs and status)


def resolve(manifest: Manifest, precision: str, *, device: DeviceKey | None, allow_onnx: bool) -> Resolution:
    """The variant a task runs: a matching plan, else (if allowed) the ONNX variant, else EngineError."""
    rejected: list[str] = []
    source = manifest.onnx(precision)
    for plan in (v for v in manifest.variants if v.format == "plan" and v.precision == precision):
        reason = _plan_problem(manifest.root, plan, device, source)
        if reason is None:
            return Resolution("plan", manifest.root / plan.file, plan, tuple(rejected))
        rejected.append(f"plan {plan.file}: {reason}")
    if source is not None and allow_onnx:
        problem = file_problem(manifest.root, source)
        if problem is None:
            return Resolution("onnx", manifest.root / source.file, source, tuple(rejected))
        rejected.append(f"onnx {source.file}: {problem}")
    elif source is not None:
        rejected.append(f"onnx {source.file}: ONNX Runtime fallback not allowed (allow_onnx: false)")
    elif precision in manifest.refused:
        rejected.append(f"the {precision} variant was refused when made: {manifest.refused[precision]['reason']}")
    else:
        rejected.append(f"no {precision} ONNX variant in the manifest")
    onnx_name = source.file if source else f"<{precision} ONNX variant>"
    raise EngineError(f"no usable {precision} engine for model {manifest.model} in {manifest.root}",
                      note="; ".join(rejected),
                      hint=f"on the target, build one: edge build {manifest.root / onnx_name}"
                           if device is not None else "set allow_onnx: true to run the ONNX variant on ONNX Runtime")


def file_problem(root: Path, variant: Variant) -> str | None:
    """Why the variant's file cannot be used (missing, or not the file the manifest names), else None."""
    path = root / variant.file
    if not path.is_file():
        return "file is missing"
    if not variant.sha256:
        return None                   # a file named in the config (`model`, `variants`): nothing to check against
    actual = sha256_file(path)
    if actual != variant.sha256:
        return f"sha256 {actual[:12]}... does not match the manifest's {variant.sha256[:12]}... (corrupt or replaced)"
    return None


def _plan_problem(root: Path, plan: Variant, device: DeviceKey | None, source: Variant | None) -> str | None:
    if device is None:
        return "TensorRT is not available on this machine"
    if plan.device is None or plan.device.platform() != device.platform():
        built = plan.device.platform() if plan.device else "unknown"
        return f"built for {built}, this device is {device.platform()}"
    if source is not None and plan.source_sha256 != source.sha256:
        return "built from another version of the ONNX variant (stale)"
    return file_problem(root, plan)
