"""A TensorRT plan built on this device from an ONNX variant, for `edge build` and the engine factory's build on
first use, with a sidecar JSON (device key, checksums), registered in the engine repository's manifest when the
ONNX lives in one. Precision comes from the ONNX variant (a strongly typed network; `legacy_fp16` is TensorRT
10's weakly typed FP16 path), and the plan is written before the timing cache, so a cache TensorRT cannot use
never costs a finished build. Profiles, DLA and the TensorRT versions: docs/cli.md, "Model toolchain".
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.engines import repository
from edge.engines.repository import atomic_output, check_writable, load_onnx
from edge.engines.tensorrt.plan import DLA_HINT, import_tensorrt, make_logger
from edge.errors import EngineError
from edge.gpu import cuda


@dataclasses.dataclass(frozen=True)
class _Built:
    plan: bytes
    input_shapes: dict[str, tuple[int, ...]]
    timing_cache: bytes | None          # serialized after the build; None when not asked for or not serialized


@dataclasses.dataclass(frozen=True)
class BuildResult:
    plan: Path
    sidecar: Path
    seconds: float
    device: repository.DeviceKey


def parse_shapes(specs: list[str]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """`NAME:1x3x416x416` (fixed) or `NAME:MIN,OPT,MAX` (each like 1x3x416x416) -> profile shapes."""
    out = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            parts = [tuple(int(v) for v in p.split("x")) for p in dims.split(",")]
        except ValueError:
            raise EngineError(f"--shapes {spec!r}: dimensions must be integers like 1x3x416x416") from None
        if not name or len(parts) not in (1, 3) or len({len(p) for p in parts}) != 1:
            raise EngineError(f"--shapes {spec!r} must be NAME:1x3x416x416 or NAME:MIN,OPT,MAX")
        low, opt, high = parts * 3 if len(parts) == 1 else parts
        if any(a > b for a, b in zip(low, opt)) or any(a > b for a, b in zip(opt, high)):
            raise EngineError(f"--shapes {spec!r}: need MIN <= OPT <= MAX in every dimension")
        out[name] = (low, opt, high)
    return out


def variant_precision(model: Any) -> str:
    """int8 for a Q/DQ graph, fp16 when its weights are float16, else fp32."""
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def build(onnx_path: Path, *, plan_path: Path | None = None, dla_core: int | None = None, workspace_mb: int = 1024,
          timing_cache: Path | None = None, shapes: list[str] | None = None, profiles: int = 1,
          legacy_fp16: bool = False, say: Callable[[str], None] = print) -> BuildResult:
    """Build `onnx_path` into a plan on this device; register it in the repository manifest if there is one.

    `profiles` copies of the dynamic inputs' optimization profile let that many cameras (slots) run the plan at
    once: TensorRT needs a profile per execution context in concurrent use."""
    trt = import_tensorrt()
    model = load_onnx(onnx_path)
    precision = variant_precision(model)
    _check_dla(dla_core, precision, legacy_fp16=legacy_fp16, onnx_path=onnx_path)
    shape_ranges = parse_shapes(shapes or [])
    if profiles < 1 or (profiles > 1 and not shape_ranges):
        raise EngineError(f"profiles={profiles}: give 1, or more than 1 together with --shapes for dynamic inputs",
                          hint="only a dynamic-shape plan has optimization profiles to copy")
    device = repository.DeviceKey(repository.read_board(), repository.read_l4t(), str(trt.__version__),
                                  cuda.compute_capability(), device_type=repository.read_device_type())
    if plan_path is None:
        plan_path = _default_plan_path(onnx_path, device)
        plan_path.parent.mkdir(exist_ok=True)
    check_writable(plan_path)
    if timing_cache is not None:
        check_writable(timing_cache)
    context = cuda.Context(0)
    started = time.monotonic()
    try:
        with context.current():
            built = _build_serialized(trt, onnx_path, device, dla_core=dla_core, workspace_mb=workspace_mb,
                                      timing_cache=timing_cache, shape_ranges=shape_ranges, profiles=profiles,
                                      legacy_fp16=legacy_fp16, say=say)
    finally:
        context.detach()
    seconds = time.monotonic() - started
    key = dataclasses.replace(device, precision=precision, input_shapes=tuple(sorted(built.input_shapes.items())))
    with atomic_output(plan_path) as tmp:
        tmp.write_bytes(built.plan)
    sidecar = plan_path.with_name(plan_path.name + ".json")
    source_sha = repository.sha256_file(onnx_path)
    with atomic_output(sidecar) as tmp:
        tmp.write_text(json.dumps({
            "device": key.to_json(), "plan_sha256": repository.sha256_file(plan_path),
            "source": {"file": str(onnx_path), "sha256": source_sha},
            "build_seconds": round(seconds, 1), "built": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "dla_core": dla_core, "profiles": profiles, "workspace_mb": workspace_mb, "legacy_fp16": legacy_fp16,
            "metadata": {p.key: p.value for p in model.metadata_props}}, indent=2, allow_nan=False))
    _register(onnx_path, plan_path, precision, key, source_sha, say)
    if timing_cache is not None and built.timing_cache is not None:
        with atomic_output(timing_cache) as tmp:
            tmp.write_bytes(built.timing_cache)
    return BuildResult(plan_path, sidecar, seconds, key)


def _check_dla(dla_core: int | None, precision: str, *, legacy_fp16: bool, onnx_path: Path) -> None:
    """DLA runs FP16 and INT8 layers only: an fp32 variant on --dla would run every layer on the GPU."""
    if dla_core is None:
        return
    if dla_core < 0:
        raise EngineError(f"--dla {dla_core}: DLA cores are numbered from 0")
    if precision == "fp32" and not legacy_fp16:
        raise EngineError(f"refusing --dla for {onnx_path.name}: it is an fp32 variant, and the DLA runs only FP16 and"
                          " INT8 layers, so every layer would silently run on the GPU",
                          hint="build the fp16 or int8 variant for the DLA (edge model fp16 / edge model quantize)")


def _default_plan_path(onnx_path: Path, device: repository.DeviceKey) -> Path:
    tag = f"{device.board}-{device.l4t}-trt{device.tensorrt}-sm{device.sm}"
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in tag)
    return onnx_path.parent / "plans" / f"{onnx_path.name.removesuffix('.onnx')}.{safe}.plan"


def _build_serialized(trt: Any, onnx_path: Path, device: repository.DeviceKey, *, dla_core: int | None,
                      workspace_mb: int, timing_cache: Path | None, shape_ranges: dict[str, Any], profiles: int,
                      legacy_fp16: bool, say: Callable[[str], None]) -> _Built:
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if dla_core is not None and dla_core >= builder.num_DLA_cores:
        raise EngineError(f"--dla {dla_core}: this device has {builder.num_DLA_cores} DLA cores"
                          f" (TensorRT {trt.__version__} on {device.board})", hint=DLA_HINT)
    strongly_typed = not legacy_fp16
    if legacy_fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineError(f"--legacy-fp16 needs TensorRT 10.x; this is {trt.__version__}, which builds only"
                          " strongly typed networks", hint="build the FP16 ONNX variant instead (edge model fp16)")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}", note="; ".join(errors[:5]),
                          hint="check the opset and operators against this TensorRT version's ONNX support")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if legacy_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    input_shapes = _profiles(builder, network, config, shape_ranges, profiles, onnx_path)
    _timing_cache(config, timing_cache, logger, say)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, say)
    say(f"building {onnx_path.name} for {device.board} (TensorRT {device.tensorrt}, SM {device.sm})"
        f"{f', DLA core {dla_core} with GPU fallback' if dla_core is not None else ''}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path}", note=logger.text(),
                          hint="see TensorRT's messages above; try a larger --workspace or without --dla")
    cache = _serialized_timing_cache(config, say) if timing_cache is not None else None
    return _Built(bytes(serialized), input_shapes, cache)


def _profiles(builder: Any, network: Any, config: Any, shape_ranges: dict[str, Any], copies: int,
              onnx_path: Path) -> dict[str, tuple[int, ...]]:
    """`copies` identical optimization profiles for dynamic inputs; returns the shape each input is built for
    (opt)."""
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    unknown = sorted(set(shape_ranges) - set(names))
    if unknown:
        raise EngineError(f"--shapes names {unknown}, which are not inputs of {onnx_path}", note=f"inputs: {names}")
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(d) for d in tensor.shape)
        if tensor.name in shape_ranges:
            low, opt, high = shape_ranges[tensor.name]
            if len(low) != len(dims) or any(d not in (-1, v) for d, v in zip(dims, opt)):
                raise EngineError(f"--shapes {tensor.name}: {list(opt)} does not fit the model's {list(dims)}")
            dims = opt
        elif -1 in dims:
            raise EngineError(f"input {tensor.name} of {onnx_path} is dynamic {list(dims)}",
                              hint=f"give its shapes: --shapes {tensor.name}:MIN,OPT,MAX")
        shapes[tensor.name] = dims
    for _ in range(copies if shape_ranges else 0):
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shape_ranges.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    return shapes


def _timing_cache(config: Any, path: Path | None, logger: Any, say: Callable[[str], None]) -> None:
    """Attach the timing cache at `path`, or a fresh one. TensorRT does not raise for a cache it cannot use:
    create_timing_cache logs and returns None for a corrupt one, set_timing_cache returns False for one from
    another device; either is said and replaced by a fresh cache."""
    if path is None:
        return
    blob = path.read_bytes() if path.is_file() else b""
    if blob and _attach_timing_cache(config, blob):
        return
    if blob:
        say(f"timing cache {path} cannot be used here ({logger.text(1)}); starting a fresh one")
    if not _attach_timing_cache(config, b""):
        raise EngineError("TensorRT could not create a fresh timing cache", note=logger.text(),
                          hint="build without --timing-cache")


def _attach_timing_cache(config: Any, blob: bytes) -> bool:
    cache = config.create_timing_cache(blob)
    return cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)


def _serialized_timing_cache(config: Any, say: Callable[[str], None]) -> bytes | None:
    cache = config.get_timing_cache()
    serialized = cache.serialize() if cache is not None else None
    if serialized is None:
        say("TensorRT did not serialize the timing cache; the plan is kept, the cache file is left as it was")
        return None
    return bytes(serialized)


def _progress_monitor(trt: Any, say: Callable[[str], None]) -> Any:
    """TensorRT's IProgressMonitor (10.0+): phase start/finish lines; never cancels the build."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _register(onnx_path: Path, plan_path: Path, precision: str, key: repository.DeviceKey, source_sha: str,
              say: Callable[[str], None]) -> None:
    """Add the plan to the engine repository when the ONNX lives in one (manifest.json beside it)."""
    root = onnx_path.parent
    if not (root / repository.MANIFEST).is_file():
        return
    try:
        relative = plan_path.resolve().relative_to(root.resolve())
    except ValueError:
        say(f"plan is outside the repository {root}; not added to its manifest")
        return
    manifest = repository.Manifest.load(root)
    manifest.put(repository.Variant(precision, "plan", str(relative), repository.sha256_file(plan_path), device=key,
                                source_sha256=source_sha))
    manifest.save()
    say(f"registered {relative} in {root / repository.MANIFEST}")
