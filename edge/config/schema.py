"""The config's schema: the typed objects a YAML config becomes (pydantic models) and their checks of one key or
one section. edge.config.loader reads a file into a Config; the rules across keys are in edge.config.rules.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.config import rules, wire
from edge.config.cameras import MAX_FRAME, CameraURI, parse_size, parse_uri, redact
from edge.config.precision import Mode, Precision
from edge.config.supervisor import SupervisorSection

HARDWARE_SCHEMES = ("file", "rtsp", "csi")     # the cameras `decode: nvdec` (and auto) may read on the hardware


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Strict):
    id: str = Field(pattern=wire.NAME_PATTERN)
    uri: str
    max_frame_size: str = "{}x{}".format(*MAX_FRAME)     # larger frames are refused before they are decoded
    decode: Literal["auto", "cpu", "nvdec"] = "auto"     # hardware decode: docs/config.md, cameras

    @field_validator("max_frame_size")
    @classmethod
    def _max_frame(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str, info: ValidationInfo) -> str:
        parsed = parse_uri(value, base_dir=(info.context or {}).get("base_dir"))
        if parsed.scheme != "file":
            return value
        query = value.partition("?")[2]
        return f"file://{parsed.location}" + (f"?{query}" if query else "")

    @model_validator(mode="after")
    def _nvdec_reads(self) -> CameraConfig:
        scheme = self.parsed.scheme
        if self.decode == "nvdec" and scheme not in HARDWARE_SCHEMES:     # csi:// on a Jetson only
            raise ValueError(f"decode: nvdec reads file://, rtsp:// and csi:// cameras, not {scheme}://; use decode:"
                             " auto (hardware decode where it can) or cpu")
        return self

    @property
    def parsed(self) -> CameraURI:
        return parse_uri(self.uri)

    @property
    def max_frame(self) -> tuple[int, int]:
        return parse_size(self.max_frame_size)

    @property
    def hardware(self) -> bool:
        """Whether a hardware reader may read it: its frames then come from a pool of surfaces sized by the frames
        in flight of the tasks that read it (Config.frames_in_flight)."""
        return self.decode != "cpu" and self.parsed.scheme in HARDWARE_SCHEMES


class DetectorParams(_Strict):
    conf_threshold: float = Field(0.3, gt=0, le=1)
    nms_iou: float = Field(0.45, gt=0, le=1)
    max_detections: int = Field(300, ge=1, le=wire.MAX_DETECTIONS)
    labels: str | None = None


MIN_RATE_HZ = 1 / 3600


class TaskConfig(_Strict):
    name: str = Field(pattern=wire.NAME_PATTERN)
    type: Literal["detector"]
    model: str | None = None
    variants: dict[Precision, str] | None = None
    engines: str | None = None
    allow_onnx: bool = True
    precision: Mode = "auto"
    preload: Literal["all", "active"] = "all"       # active: load a variant when first chosen, keep it loaded
    cameras: list[str] = Field(min_length=1)
    rate_limit_hz: float = Field(0.0, ge=0, le=1000)     # 0 = off
    priority: int = Field(50, ge=0, le=100)
    enabled: bool = True
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"   # auto: TensorRT where it and a GPU are
    threads: int | None = Field(None, ge=1, le=64)
    in_flight: int = Field(2, ge=1, le=8)
    batch: bool = False         # true: one batched execution over all the task's cameras (docs/performance.md)
    copy_mode: Literal["auto", "copy", "zerocopy"] = "auto"    # TensorRT IO: auto = zerocopy on an integrated GPU
    cuda_graph: bool | Literal["auto"] = "auto"    # TensorRT: each frame one CUDA graph launch where it can (auto)
    params: DetectorParams = DetectorParams()

    @field_validator("rate_limit_hz")
    @classmethod
    def _rate(cls, value: float) -> float:
        # a tiny rate made the frame gap overflow (1e-300 Hz ended the daemon with an OverflowError)
        if 0 < value < MIN_RATE_HZ:
            raise ValueError(f"must be 0 (off) or at least {MIN_RATE_HZ:.6f} Hz (one frame an hour)")
        return value

    @field_validator("model", "engines")
    @classmethod
    def _model_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @field_validator("variants")
    @classmethod
    def _variant_paths(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        return None if value is None else {k: _resolve(v, info) for k, v in value.items()}

    @field_validator("cameras")
    @classmethod
    def _distinct_cameras(cls, value: list[str]) -> list[str]:
        twice = sorted({c for c in value if value.count(c) > 1})
        if twice:
            raise PydanticCustomError("camera_twice", "lists camera(s) {twice} more than once", {"twice": twice})
        return value

    @model_validator(mode="after")
    def _one_model(self, info: ValidationInfo) -> TaskConfig:
        if not _rules_checked(info):                  # parse_config checks these on the raw file, with the rest
            rules.raise_problems(rules.task_rules((), self.model_dump()))
        return self

    @property
    def model_files(self) -> dict[str, str]:
        """precision -> ONNX file for `model`/`variants` (empty for `engines`, resolved by edge.engines.repository)."""
        return {"fp32": self.model} if self.model is not None else dict(self.variants or {})


class CurveConfig(_Strict):
    """CURVE on a tcp results socket (ZeroMQ's CurveZMQ: encryption and client keys; `edge curve-keys`)."""

    secret_key: str          # the daemon's certificate with its secret key (NAME.key_secret)
    clients: str             # a directory of the public certificates (*.key) of the subscribers allowed in

    @field_validator("secret_key", "clients")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class OutputConfig(_Strict):
    results: str = Field(default_factory=wire.default_results_endpoint)
    curve: CurveConfig | None = None
    heartbeat_hz: float = Field(1.0, gt=0, le=10)
    queue_size: int = Field(64, ge=1, le=10_000)
    sndhwm: int = Field(100, ge=1, le=100_000)
    labels: bool = False

    @field_validator("results")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return wire.check_endpoint(value)

    @model_validator(mode="after")
    def _tcp_needs_curve(self) -> OutputConfig:
        if self.results.startswith("tcp://") and self.curve is None:
            where = "any process on this machine" if wire.is_loopback(self.results) else "anyone on the network"
            raise ValueError(f"results on {redact(self.results)} without CURVE would reach {where}: set output.curve"
                             " (secret_key, clients; `edge curve-keys` makes the keys), or use ipc://")
        return self


class ControlConfig(_Strict):
    endpoint: str = Field(default_factory=wire.default_control_endpoint)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith("ipc://"):
            raise ValueError(f"the control socket {redact(value)!r} must be ipc:// (a socket file only this user and"
                             " root can reach); tcp would let any local process command the daemon")
        return wire.check_endpoint(value)


class MetricsConfig(_Strict):
    """YAML `metrics:`, the Prometheus endpoint (docs/operations.md, Metrics). Without the section there is none
    (a port is an attack surface, and two daemons on one machine would want the same one); written, it is on."""

    enabled: bool = True
    listen: str = "127.0.0.1:9108"      # this machine only; another address is reachable by whoever can route to it

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` -> (IP address, port): HOST an IPv4 address, an IPv6 one in brackets, or localhost (127.0.0.1);
    PORT 0 to 65535 (0: any free port). ValueError with the rule otherwise."""
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = "127.0.0.1" if host == "localhost" else host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or (address.version == 6) != bracketed or not re.fullmatch(r"[0-9]{1,5}", port) \
            or int(port) > 65535:
        raise ValueError("must be HOST:PORT: an IP address (IPv6 in brackets, [::1]:9108) or localhost, and a port"
                         " from 0 to 65535, e.g. 127.0.0.1:9108 (this machine only) or 0.0.0.0:9108 (every interface)")
    return str(address), int(port)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Strict):
    version: Literal[1]
    cameras: list[CameraConfig] = Field(min_length=1)
    tasks: list[TaskConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig(enabled=False))   # off without the section
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Config:
        if not _rules_checked(info):                  # parse_config checks these on the raw file, with the rest
            cameras, tasks = [c.model_dump() for c in self.cameras], [t.model_dump() for t in self.tasks]
            rules.raise_problems(rules.reference_rules(cameras, tasks))
        return self

    def camera(self, camera_id: str) -> CameraConfig:
        return next(c for c in self.cameras if c.id == camera_id)

    def frames_in_flight(self, camera_id: str) -> int:
        """The frames the tasks that read a camera may hold at once: their in_flight summed, a disabled task's too
        (enabling it needs no bigger pool). A hardware reader's pool holds 2 more (edge/pipeline/runtime.py)."""
        return sum(task.in_flight for task in self.tasks if camera_id in task.cameras)

    def used_camera_ids(self) -> list[str]:
        """Cameras that at least one enabled task uses, in config order (the others are never opened)."""
        used = {c for t in self.tasks if t.enabled for c in t.cameras}
        return [c.id for c in self.cameras if c.id in used]


def _rules_checked(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("rules_checked"))


def _resolve(value: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    path = Path(value)
    return str(base / path) if base is not None and not path.is_absolute() else value
