"""Inference backends behind one engine contract (base.py); heavy imports happen lazily inside each.

The factory: a task's config + its engine repository + this device -> the engines of its precision
variants, each with the reason it runs where it runs, and the reason for every variant that cannot.
A task's `model` (one fp32 file) and `variants` (precision -> file) become an in-memory manifest, so
`model`, `variants` and `engines` take one path through `repository.resolve`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from edge.config.precision import PRECISIONS
from edge.config.schema import TaskConfig
from edge.engines import repository
from edge.engines.base import Engine, Preprocessing
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.engines.tensorrt import build
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.engines.tensorrt.plan import device_key
from edge.errors import EngineError
from edge.log import get_logger

log = get_logger("engine")
CPU_FP16 = "ONNX Runtime on CPU runs FP16 no faster than FP32, so this task runs its fp32 variant instead"


@dataclasses.dataclass
class Variants:
    """What a task can run here: engines (not activated) by precision, and why the others cannot run."""

    engines: dict[str, Engine]
    unavailable: dict[str, str]

    def first(self, order: tuple[str, ...]) -> str | None:
        return next((p for p in order if p in self.engines), None)


def manifest_of(task: TaskConfig) -> repository.Manifest:
    """The task's manifest: loaded from `engines`, or made in memory from `model` / `variants` (their
    files are the user's own: no sha256 to check them against)."""
    if task.engines is not None:
        return repository.Manifest.load(Path(task.engines))
    files = task.model_files
    variants = [repository.Variant(precision, "onnx", str(Path(path).resolve()), "")
                for precision, path in files.items()]
    first = next(iter(files.values()))
    return repository.Manifest(Path(first).resolve().parent, Path(first).name, variants)


def choose_backend(task: TaskConfig) -> tuple[str, repository.DeviceKey | None, str]:
    """(backend, this device's plan key or None, why) for the task's `backend: auto|tensorrt|onnxruntime`."""
    if task.backend == "onnxruntime":
        return "onnxruntime", None, "backend: onnxruntime in the config"
    try:
        device = device_key()
        missing = "TensorRT is not installed here" if device is None else ""
    except EngineError as exc:                   # TensorRT is there, CUDA is not (no driver, no pycuda)
        device, missing = None, f"TensorRT is installed but CUDA is not usable: {exc.what}"
    if device is None:
        if task.backend == "tensorrt":
            raise EngineError(f"task {task.name}: backend tensorrt, but {missing}",
                              hint="on a Jetson install JetPack's python3-libnvinfer and edge's `jetson` extra;"
                                   " elsewhere set backend: auto or onnxruntime")
        return "onnxruntime", None, f"auto: {missing}"
    return "tensorrt", device, f"{task.backend}: TensorRT {device.tensorrt} on {device.board}, SM {device.sm}"


def variants_for(task: TaskConfig, *, threads: int, preprocessing: Preprocessing | None,
                 progress: Callable[[str], None] | None = None) -> Variants:
    """Every precision variant of `task` that can run on this machine, as an engine ready to activate.
    `preprocessing` is what the task's type names (edge.tasks.preprocessing_of): a TensorRT engine runs it on
    raw frames itself, and refuses a kind it does not know; with None the task preprocesses on the CPU. On
    TensorRT, a variant of an engine repository (`engines:`) that has no plan for this device gets one
    built now (minutes on a Jetson, once: the plan is kept in the repository); `progress` hears each step of
    such a build."""
    backend, device, why = choose_backend(task)
    log.info("task %s: %s (%s)", task.name, backend, why)
    manifest = manifest_of(task)
    engines: dict[str, Engine] = {}
    unavailable = {p: f"refused when it was made: {r['reason']}" for p, r in sorted(manifest.refused.items())}
    present = {v.precision for v in manifest.variants}
    allow_onnx = task.allow_onnx and task.backend != "tensorrt"
    for precision in (p for p in PRECISIONS if p in present):
        if device is not None and task.engines is not None:
            manifest = _with_plan(task, manifest, precision, device, progress)
        try:
            choice = repository.resolve(manifest, precision, device=device, allow_onnx=allow_onnx)
        except EngineError as exc:
            unavailable[precision] = exc.summary()
            continue
        for reason in choice.rejected:
            log.info("task %s: not using %s", task.name, reason)
        if choice.format == "plan":
            engines[precision] = TensorRTEngine(choice.path, precision=precision, copy_mode=task.copy_mode,
                                                 preprocessing=preprocessing, cuda_graph=task.cuda_graph)
        else:
            engines[precision] = OnnxRuntimeEngine(choice.path, precision=precision, threads=threads)
    if "fp16" in engines and engines["fp16"].backend == "onnxruntime" and "fp32" in engines:
        del engines["fp16"]
        unavailable["fp16"] = CPU_FP16
    if not engines:
        raise EngineError(f"task {task.name}: no variant of {manifest.model} can run here",
                          note="; ".join(f"{p}: {why}" for p, why in unavailable.items()) or "the manifest lists none",
                          hint="make the variants (`edge assets fetch` for the demo), or build plans with `edge build`")
    for precision, why in unavailable.items():
        log.log(logging.INFO if why == CPU_FP16 else logging.WARNING, "task %s: no %s variant: %s", task.name,
                precision, why)
    return Variants(engines, unavailable)


def _with_plan(task: TaskConfig, manifest: repository.Manifest, precision: str, device: repository.DeviceKey,
               progress: Callable[[str], None] | None) -> repository.Manifest:
    """The manifest, with a plan of `precision` for this device built first when it has none that can run.
    A failed build is logged; resolving then says what is missing (or falls back to the ONNX variant)."""
    source = manifest.onnx(precision)
    try:
        repository.resolve(manifest, precision, device=device, allow_onnx=False)
        return manifest                                  # a plan for this device is there
    except EngineError:
        if source is None:
            return manifest
    onnx = manifest.root / source.file
    log.warning("task %s: building the %s TensorRT plan of %s for this device; this takes minutes on a Jetson,"
                " once", task.name, precision, onnx.name)
    def say(line: str) -> None:
        log.info("task %s: %s", task.name, line)
        if progress is not None:
            progress(f"starting: task {task.name}: building its {precision} plan: {line.strip()}")
    try:
        result = build.build(onnx, say=say)
    except EngineError as exc:
        log.error("task %s: the %s plan could not be built: %s", task.name, precision, exc)
        return manifest
    log.warning("task %s: built %s in %.0f s", task.name, result.plan.name, result.seconds)
    return repository.Manifest.load(manifest.root)


def default_threads(task: TaskConfig, total_lanes: int) -> int:
    """ONNX Runtime threads: the usable cores shared among all lanes (`total_lanes`: the cameras of all running
    tasks). Two sessions running at once with all cores each oversubscribe the CPU (benchmarks/cpu_pipeline.py).
    A batched task (`batch: true`) runs one execution at a time for all its cameras: they count as one lane."""
    lanes = total_lanes - len(task.cameras) + 1 if task.batch else total_lanes
    return task.threads or max(1, len(os.sched_getaffinity(0)) // max(1, lanes))
