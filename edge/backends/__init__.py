"""Inference backends behind one engine contract (base.py); heavy imports happen lazily inside each.

The factory: a task's config + its engine repository + this device -> the engines of its precision
variants, each with the reason it runs where it runs, and the reason for every variant that cannot.
A task's `model` (one fp32 file) and `variants` (precision -> file) become an in-memory manifest, so
`model`, `variants` and `engines` take one path through `bundle.resolve`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from edge import bundle
from edge.backends import tensorrt
from edge.backends.base import Engine
from edge.backends.onnxruntime import OnnxRuntimeEngine
from edge.config import PRECISIONS, TaskConfig
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


def manifest_of(task: TaskConfig) -> bundle.Manifest:
    """The task's manifest: loaded from `engines`, or made in memory from `model` / `variants` (their
    files are the user's own: no sha256 to check them against)."""
    if task.engines is not None:
        return bundle.Manifest.load(Path(task.engines))
    files = task.model_files
    variants = [bundle.Variant(precision, "onnx", str(Path(path).resolve()), "") for precision, path in files.items()]
    first = next(iter(files.values()))
    return bundle.Manifest(Path(first).resolve().parent, Path(first).name, variants)


def variants_for(task: TaskConfig, *, threads: int) -> Variants:
    """Every precision variant of `task` that can run on this machine, as an engine ready to activate."""
    manifest = manifest_of(task)
    device = tensorrt.device_key()
    engines: dict[str, Engine] = {}
    unavailable = {p: f"refused when it was made: {r['reason']}" for p, r in sorted(manifest.refused.items())}
    present = {v.precision for v in manifest.variants}
    for precision in (p for p in PRECISIONS if p in present):
        try:
            choice = bundle.resolve(manifest, precision, device=device, allow_onnx=task.allow_onnx)
        except EngineError as exc:
            unavailable[precision] = f"{exc.what} ({exc.note})" if exc.note else exc.what
            continue
        for reason in choice.rejected:
            log.info("task %s: not using %s", task.name, reason)
        if choice.format == "plan":
            engines[precision] = tensorrt.TensorRTEngine(choice.path, precision=precision)
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


def default_threads(task: TaskConfig, total_lanes: int) -> int:
    """ONNX Runtime threads: the usable cores shared among all lanes. Two sessions running at once with
    all cores each oversubscribe the CPU (benchmarks/cpu_pipeline.py)."""
    return task.threads or max(1, len(os.sched_getaffinity(0)) // max(1, total_lanes))
