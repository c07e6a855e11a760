"""The report of benchmarks/gpu_pipeline.py: the targets, the machine, the tables it prints and its JSON form."""
from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import cv2

from benchmarks.pipeline_loops import Run


def target(name: str, source: str | None, value: float, goal: float, *, at_most: bool = False) -> dict[str, Any]:
    met = value <= goal if at_most else value >= goal
    return {"target": name, "frames": source, "value": round(value, 3), "goal": goal, "met": met}


def targets(summary: dict[str, dict[int, dict[str, Run]]], bound: dict[str, Any], bound_holds: bool,
            pre: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for source, by_cameras in summary.items():
        for n in (4, 8):
            if n in by_cameras:
                s = by_cameras[n]
                rows.append(target(f"(b) >= 0.9x (d) at {n} cameras", source, s["b"].fps / s["d"].fps, 0.9))
                rows.append(target(f"(g) >= 0.9x (d) at {n} cameras", source, s["g"].fps / s["d"].fps, 0.9))
                if bound_holds:
                    rows.append(target(f"(b) >= 0.9x (c) at {n} cameras", source, s["b"].fps / bound["fps"], 0.9))
        if 4 in by_cameras:
            rows.append(target("(b) >= 1.8x (a) at 4 cameras", source, by_cameras[4]["b"].fps / by_cameras[4]["a"].fps,
                               1.8))
        for kind in ("b", "g"):
            worst = max(by_cameras, key=lambda n: by_cameras[n][kind].host_ms)
            rows.append(target(f"({kind}) host time <= 0.3 ms per frame (worst: {worst} cameras)", source,
                               by_cameras[worst][kind].host_ms, 0.3, at_most=True))
    rows.append(target("GPU letterbox kernel >= 10x OpenCV's CPU letterbox", None, pre["speedup_kernel"], 10))
    return rows


def machine(drv: Any) -> dict[str, Any]:
    import torch

    from benchmarks.gpu_preprocess import cpu_model

    device = drv.Context.get_device()
    major, minor = device.compute_capability()
    return {"gpu": device.name(), "sm": f"{major}.{minor}", "gpu_memory_gib": round(device.total_memory() / 2 ** 30, 1),
            "cuda_driver": drv.get_driver_version(), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "opencv": cv2.__version__}


def print_report(report: dict[str, Any], summary: dict[str, dict[int, dict[str, Run]]]) -> None:
    m, stages, pre, bound = report["machine"], report["stages_ms"], report["preprocessing"], report["ideal_bound"]
    print(f"GPU {m['gpu']} (SM {m['sm']}, {m['gpu_memory_gib']} GiB), CUDA driver {m['cuda_driver']};"
          f" CPU {m['cpu']} ({m['cores']} cores); torch {m['torch']}, cuDNN {m['cudnn']}, OpenCV {m['opencv']}")
    print(f"engine stand-in: {report['stand_in']}")
    print("stage times (CUDA events, median ms, one camera alone): "
          + ", ".join(f"{stage} {value:.4f}" for stage, value in stages.items()))
    print("host ms to enqueue each stage (minimal loop, median): "
          + ", ".join(f"{stage} {value:.4f}" for stage, value in report["enqueue_host_ms"].items()))
    print(f"(c) ideal bound: {bound['fps']:.0f} fps, busiest: {bound['busiest']}; {bound['note']}")
    print(f"preprocessing 1080p -> 416x416: OpenCV CPU {pre['cpu_ms']:.3f} ms ({pre['cpu_opencv_threads']} threads),"
          f" {pre['cpu_1_thread_ms']:.3f} ms (1 thread); GPU kernel {pre['gpu_kernel_ms']:.4f} ms"
          f" ({pre['speedup_kernel']}x), upload + kernel {pre['gpu_upload_and_kernel_ms']:.4f} ms"
          f" ({pre['speedup_upload_and_kernel']}x); max abs difference {pre['max_abs_difference']}")
    for source, by_cameras in summary.items():
        print_table(source, by_cameras, bound["fps"])
    print_batches(summary["pinned"])
    print("\nhost ms per frame by call, pinned frames (runs of their own):")
    for n, by_kind in report["host_split_ms"].items():
        print(f"  {n} cameras: " + "; ".join(f"({kind}) " + ", ".join(f"{name} {ms:.4f}" for name, ms in calls.items())
                                              for kind, calls in by_kind.items()))
    print("\ntargets:")
    for row in report["targets"]:
        where = f" [{row['frames']} frames]" if row["frames"] else ""
        print(f"  {'met    ' if row['met'] else 'NOT met'} {row['target']}{where}: {row['value']} (goal {row['goal']})")
    print(f"\nedge's outputs vs the minimal loop's, same frame: max abs difference {report['outputs_max_difference']}")


def print_table(source: str, by_cameras: dict[int, dict[str, Run]], bound_fps: float) -> None:
    print(f"\nframes: {source}; fps over all cameras, host ms per frame, cores: the loops' CPU seconds per second")
    print(f"{'cameras':>7} {'(a) fps':>9} {'(b) fps':>9} {'(g) fps':>9} {'(d) fps':>9} {'(c) fps':>9} {'b/a':>6}"
          f" {'b/d':>6} {'g/d':>6} {'b/c':>6} {'host a':>7} {'host b':>7} {'host g':>7} {'host d':>7} {'cores b':>8}"
          f" {'cores g':>8} {'cores d':>8}")
    for n, s in by_cameras.items():
        a, b, g, d = s["a"], s["b"], s["g"], s["d"]
        print(f"{n:>7} {a.fps:>9.0f} {b.fps:>9.0f} {g.fps:>9.0f} {d.fps:>9.0f} {bound_fps:>9.0f}"
              f" {b.fps / a.fps:>6.2f} {b.fps / d.fps:>6.2f} {g.fps / d.fps:>6.2f} {b.fps / bound_fps:>6.2f}"
              f" {a.host_ms:>7.3f} {b.host_ms:>7.3f} {g.host_ms:>7.3f} {d.host_ms:>7.3f} {b.cores:>8.2f}"
              f" {g.cores:>8.2f} {d.cores:>8.2f}")


def print_batches(by_cameras: dict[int, dict[str, Run]]) -> None:
    print("\nbatching, pinned frames: N cameras as N per-camera slots (b) or one batch-N slot; latency: a frame's"
          " submission to its result, ms")
    print(f"{'N':>3} {'(b) fps':>9} {'p50':>7} {'p99':>7} {'batch fps':>10} {'p50':>7} {'p99':>7} {'batch/b':>8}"
          f" {'host b':>7} {'host batch':>10}")
    for n, s in by_cameras.items():
        b, batch = s["b"], s["batch"]
        print(f"{n:>3} {b.fps:>9.0f} {b.p50_ms:>7.3f} {b.p99_ms:>7.3f} {batch.fps:>10.0f} {batch.p50_ms:>7.3f}"
              f" {batch.p99_ms:>7.3f} {batch.fps / b.fps:>8.2f} {b.host_ms:>7.3f} {batch.host_ms:>10.3f}")


def bound_note(bound: dict[str, Any], summary: dict[str, dict[int, dict[str, Run]]]) -> bool:
    """Whether (c) held (no run exceeded it); says so in bound['note']."""
    best = max(run.fps for by_cameras in summary.values() for s in by_cameras.values() for run in s.values())
    holds = best <= bound["fps"]
    bound["note"] = (f"a bound here: no run exceeded it (best {best:.0f} fps)" if holds else
                     f"NOT a bound on this card: runs reached {best:.0f} fps. One batch-1 frame of a network this"
                     " small leaves most of the SMs idle, so the kernels of several streams' frames run side by side"
                     " and the compute stage's time alone does not limit the rate")
    return holds


def as_json(tree: Any) -> Any:
    """Runs as dicts and camera counts as strings, for the JSON report."""
    if isinstance(tree, Run):
        return dataclasses.asdict(tree)
    if isinstance(tree, dict):
        return {str(key): as_json(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [as_json(value) for value in tree]
    return tree




def compare_networks(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The networks side by side (pinned frames): the engine stage's GPU ms, and fps of (b), (g) and (d) at each
    camera count; printed as a table."""
    names = list(reports)
    engine_ms = {name: report["stages_ms"]["engine"] for name, report in reports.items()}
    counts = list(next(iter(reports.values()))["results"]["pinned"])
    fps = {n: {kind: {name: round(reports[name]["results"]["pinned"][n][kind]["fps"], 1) for name in names}
               for kind in ("b", "g", "d")} for n in counts}
    print("\nnetworks side by side, pinned frames: engine stage " +
          ", ".join(f"{name} {ms:.4f} ms" for name, ms in engine_ms.items()))
    print(f"{'cameras':>7} " + " ".join(f"{f'({kind}) {name}':>14}" for kind in ("b", "g", "d") for name in names))
    for n, by_kind in fps.items():
        print(f"{n:>7} " + " ".join(f"{by_kind[kind][name]:>14.0f}" for kind in ("b", "g", "d") for name in names))
    return {"engine_ms": engine_ms, "fps_pinned": fps}
