"""GPU preprocessing (edge/gpu/letterbox.py) against the CPU letterbox (edge/letterbox.py) for 1080p
frames into the demo model's 1x3x416x416 input, in one run on the device machine (issue 9, item 3).

Rows, medians of --iterations after a warm-up:
  cpu letterbox_into     OpenCV resize + BGR->RGB + /255 into a pinned fp32 input (perf_counter), with
                         OpenCV's default thread pool and with one thread (a lane's share of a Jetson's cores)
  frame copy to pinned   np.copyto of the pageable 1080p frame into run()'s staging buffer (perf_counter)
  H2D upload             the 6.2 MB frame, pinned -> device (CUDA events)
  kernel fp32 / fp16     GpuLetterbox.launch on a frame already on the device (CUDA events)
  kernel zero-copy       the kernel reading the frame from mapped pinned memory (over PCIe on a discrete card)
  kernel nv12 / bgrx     launch_planes on a decoder's kind of frame (NV12 BT.601 limited, BGRx), on the device and
                         zero-copy, against the CPU path of an NV12 frame: cvtColor + letterbox_into (perf_counter)
  run() GPU span         upload + kernel as run() enqueues them, frame in frame_buffer (CUDA events)
  run() host             what run() costs the calling thread: from a pageable frame (copy included) and
                         from frame_buffer (perf_counter)
and the max abs difference of the GPU output against the CPU letterbox on the same frames.
Eight different noise frames rotate (content does not change the timings; a frame is not cache-hot).

Usage: python benchmarks/gpu_preprocess.py [--iterations 2000] [--out FILE]
Prints a table; writes JSON to --out, else to $OUT/gpu_preprocess.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.gpu import cuda, nvrtc
from edge.gpu.letterbox import MAX_ABS_DIFF, GpuLetterbox
from edge.letterbox import letterbox_into

NET = (1, 3, 416, 416)
WIDTH, HEIGHT = 1920, 1080
CPU_POOL, CPU_ONE = "cpu letterbox_into, OpenCV's threads", "cpu letterbox_into, 1 thread"
KERNEL, SPAN = "kernel float32 (GPU)", "run() GPU span: upload + kernel"


def host_ms(action: Callable[[int], Any], iterations: int, then: Callable[[], Any] = lambda: None) -> float:
    """Median wall time of action(i) on this thread, in ms, after a warm-up; then() runs untimed after each."""
    times = []
    for i in range(-min(50, iterations), iterations):
        start = time.perf_counter()
        action(i)
        elapsed = time.perf_counter() - start
        then()
        if i >= 0:
            times.append(elapsed)
    return statistics.median(times) * 1e3


def gpu_ms(action: Callable[[int], Any], stream: cuda.Stream, iterations: int) -> float:
    """Median GPU time between CUDA events around what action(i) enqueues on `stream`, in ms."""
    driver = cuda.driver()
    start, end = driver.Event(), driver.Event()
    times = []
    for i in range(-min(50, iterations), iterations):
        start.record(stream.raw)
        action(i)
        end.record(stream.raw)
        end.synchronize()
        if i >= 0:
            times.append(end.time_since(start))
    return statistics.median(times)


def cpu_rows(frames: list[np.ndarray], iterations: int) -> dict[str, float]:
    pinned = cuda.HostBuffer(NET, np.float32)
    threads = cv2.getNumThreads()
    try:
        rows = {CPU_POOL: host_ms(lambda i: letterbox_into(frames[i % len(frames)], pinned.array), iterations)}
        cv2.setNumThreads(1)
        rows[CPU_ONE] = host_ms(lambda i: letterbox_into(frames[i % len(frames)], pinned.array), iterations)
    finally:
        cv2.setNumThreads(threads)
        pinned.free()
    return rows


def transfer_rows(frames: list[np.ndarray], stream: cuda.Stream, iterations: int) -> dict[str, float]:
    staging = cuda.HostBuffer(frames[0].shape, np.uint8)
    device = cuda.DeviceBuffer(frames[0].nbytes)
    try:
        return {"frame copy to pinned (host)": host_ms(lambda i: np.copyto(staging.array, frames[i % len(frames)]),
                                                       iterations),
                "H2D upload 1080p (GPU)": gpu_ms(lambda i: device.upload(staging.array, stream), stream, iterations)}
    finally:
        device.free()
        staging.free()


def kernel_times(dtype: Any, sources: dict[str, int], out: int, stream: cuda.Stream,
                 iterations: int) -> dict[str, float]:
    """The kernel alone, in `dtype`, reading the frame from each of `sources` (name -> device address)."""
    pre = GpuLetterbox(NET, dtype)
    try:
        return {f"kernel {np.dtype(dtype).name}{name} (GPU)":
                gpu_ms(lambda i, ptr=ptr: pre.launch(ptr, WIDTH, HEIGHT, out, stream), stream, iterations)
                for name, ptr in sources.items()}
    finally:
        pre.free()


def kernel_rows(frames: list[np.ndarray], stream: cuda.Stream, iterations: int) -> dict[str, float]:
    source = cuda.DeviceBuffer(frames[0].nbytes)
    mapped = cuda.HostBuffer(frames[0].shape, np.uint8, mapped=True)
    mapped.array[:] = frames[0]
    source.upload(mapped.array, stream)
    out = cuda.DeviceBuffer(3 * 416 * 416 * 4)
    sources = {"": source.pointer, " zero-copy": mapped.device_pointer()}
    try:
        return {**kernel_times(np.float32, sources, out.pointer, stream, iterations),
                **kernel_times(np.float16, sources, out.pointer, stream, iterations)}
    finally:
        for owned in (source, mapped, out):
            owned.free()


def colour_rows(stream: cuda.Stream, iterations: int) -> dict[str, float]:
    """The fused colour conversion: the kernel on a 1080p NV12 and a BGRx frame, against the CPU's cvtColor +
    letterbox_into of the NV12 frame."""
    rng = np.random.default_rng(1)
    nv12 = rng.integers(0, 256, (HEIGHT * 3 // 2, WIDTH), dtype=np.uint8)
    bgrx = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    pinned = cuda.HostBuffer(NET, np.float32)
    rows = {"cpu cvtColor(NV12) + letterbox_into": host_ms(
        lambda i: letterbox_into(cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12), pinned.array), iterations)}
    pre = GpuLetterbox(NET, np.float32)
    out = cuda.DeviceBuffer(pre.nbytes)
    owned = [pinned, pre, out]
    try:
        for name, frame, pitch in (("nv12", nv12, WIDTH), ("bgrx", bgrx, WIDTH * 4)):
            owned += [cuda.DeviceBuffer(frame.nbytes), cuda.HostBuffer(frame.shape, np.uint8, mapped=True)]
            device, mapped = owned[-2:]
            mapped.array[:] = frame
            device.upload(mapped.array, stream)
            for where, base in (("", device.pointer), (" zero-copy", mapped.device_pointer())):
                planes = (base, base + WIDTH * HEIGHT) if name == "nv12" else (base,)
                rows[f"kernel {name} float32{where} (GPU)"] = gpu_ms(
                    lambda i, planes=planes, name=name, pitch=pitch: pre.launch_planes(
                        planes, pitch, WIDTH, HEIGHT, out.pointer, stream, pixel_format=name), stream, iterations)
    finally:
        stream.synchronize()
        for thing in owned:
            thing.free()
    return rows


def run_rows(frames: list[np.ndarray], stream: cuda.Stream, iterations: int) -> dict[str, float]:
    pre = GpuLetterbox(NET, np.float32)
    out = cuda.DeviceBuffer(pre.nbytes)
    staged = pre.frame_buffer(WIDTH, HEIGHT)
    staged[:] = frames[0]

    try:
        return {SPAN: gpu_ms(lambda i: pre.run(staged, out.pointer, stream), stream, iterations),
                "run() host, pageable frame (copy included)": host_ms(
                    lambda i: pre.run(frames[i % len(frames)], out.pointer, stream), iterations, stream.synchronize),
                "run() host, frame_buffer": host_ms(lambda i: pre.run(staged, out.pointer, stream), iterations,
                                                    stream.synchronize)}
    finally:
        stream.synchronize()
        out.free()
        pre.free()


def max_differences(frames: list[np.ndarray], stream: cuda.Stream) -> dict[str, float]:
    result = {}
    want = np.empty(NET, np.float32)
    for dtype in (np.float32, np.float16):
        pre = GpuLetterbox(NET, dtype)
        out, got = cuda.DeviceBuffer(pre.nbytes), np.empty(NET, dtype)
        worst = 0.0
        for frame in frames:
            letterbox_into(frame, want)
            pre.run(frame, out.pointer, stream)
            out.download(got, stream)
            stream.synchronize()
            worst = max(worst, float(np.abs(got.astype(np.float32) - want).max()))
        out.free()
        pre.free()
        result[np.dtype(dtype).name] = worst
    return result


def cpu_model() -> str:
    """The CPU's model name (edge.engines.onnxruntime.cpu_facts needs onnx, which the GPU machine lacks)."""
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    driver = cuda.driver()
    device = driver.Context.get_device()
    major, minor = device.compute_capability()
    return {"gpu": device.name(), "sm": f"{major}.{minor}", "cuda_driver": driver.get_driver_version(),
            "nvrtc": nvrtc.version(), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(), "python": platform.python_version()}


def report(rows: dict[str, float], diffs: dict[str, float], facts: dict[str, Any]) -> dict[str, Any]:
    speedups = {"cpu (OpenCV's threads) / kernel fp32": rows[CPU_POOL] / rows[KERNEL],
                "cpu (1 thread) / kernel fp32": rows[CPU_ONE] / rows[KERNEL],
                "cpu (OpenCV's threads) / run() GPU span": rows[CPU_POOL] / rows[SPAN]}
    print(f"GPU {facts['gpu']} (SM {facts['sm']}), CPU {facts['cpu']} ({facts['cores']} cores), "
          f"OpenCV {facts['opencv']} ({facts['opencv_threads']} threads), NVRTC {facts['nvrtc']}")
    print(f"1080p BGR uint8 -> {NET} (median ms)")
    for name, value in rows.items():
        print(f"  {name:44s} {value:9.4f}")
    for name, value in speedups.items():
        print(f"  speed-up {name:35s} {value:9.1f}x")
    for name, value in diffs.items():
        bound = MAX_ABS_DIFF[np.dtype(name)]
        print(f"  max abs difference {name:7s} vs CPU: {value:.6g} (documented bound {bound:.6g})")
    return {"machine": facts, "frame": [WIDTH, HEIGHT], "input": list(NET), "median_ms": rows,
            "speedups": speedups, "max_abs_difference": diffs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) / "gpu_preprocess.json"
                        if os.environ.get("OUT") else None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(8)]
    context = cuda.Context(0)
    with context.current():
        stream = cuda.Stream()
        rows = {**cpu_rows(frames, args.iterations), **transfer_rows(frames, stream, args.iterations),
                **kernel_rows(frames, stream, args.iterations), **colour_rows(stream, args.iterations),
                **run_rows(frames, stream, args.iterations)}
        result = report(rows, max_differences(frames, stream), machine())
        stream.free()
    context.detach()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
