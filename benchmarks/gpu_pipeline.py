"""The GPU pipeline, end to end (issue 9): 1080p uint8 frames through upload, the letterbox kernel, an engine
and download at 1, 2, 4 and 8 cameras; edge's TensorRT slots against a serial loop, a minimal multi-stream
loop and the ideal bound, all in one run on the device machine.

Engine stand-ins (the device machine has no TensorRT; benchmarks/graph_engine.py), `--networks`: `random`, the
demo model's shape class with random weights (benchmarks/torch_engine.py), and `real`, the demo ONNX itself
through onnx2torch (benchmarks/onnx_engine.py); each run by PyTorch, captured as one CUDA graph per frame record
and replayed on the caller's raw stream, one launch per frame like a TensorRT enqueue. Edge runs them unmodified:
tests/support/fake_tensorrt.py with `execute_async_v3` replaying the graph, loaded by
edge.engines.tensorrt.engine.TensorRTEngine, reading and writing the slot's own device buffers. Every
measurement below runs for each network in turn; a last table puts their rates side by side.

Measurements (per camera count; medians of --reps runs of --frames frames per camera after --warmup):
  (a) serial   the TensorRT samples' loop: one thread; per frame H2D, letterbox kernel, engine, D2H, then
               stream.synchronize(); cameras in turn, each with its own buffers and stream
  (b) edge     one thread per camera, each with a TrtSlot of TensorRTEngine (copy mode, K=2, GPU
               preprocessing in the slot, three streams), making the calls Lane makes: submit_frame, and
               wait(copy=False) of the oldest when K are in flight (no decode, no postprocessing, no publish)
  (c) ideal    1/max(stage) over the stream resources (H2D copy engine; SMs: letterbox + engine; D2H copy
               engine) from the stage times; not a bound where one batch-1 frame leaves the SMs idle
  (g) graphs   (b) with `cuda_graph: true`: each frame record has its own stream and execution context and
               runs a frame as one CUDA graph (upload, letterbox, engine, download) captured once
  (d) minimal  one thread and one stream per camera, K=2 frame records (pinned frame, device frame, input,
               outputs, a blocking-sync event): raw pycuda calls per frame, edge's kernel source, the same
               stand-in; no slot, engine or lane code: the anchor for edge's own overhead
Frame sources: `pinned` (the frame is in pinned memory already, as when a capture decodes into the slot's
frame_buffer; nothing is copied on the host) and `pageable` (a numpy frame as today's cameras give it,
copied into pinned memory first: by submit_frame in (b), by np.copyto in (a) and (d)).
Stage times: CUDA events around each stage of one frame, one camera, nothing else running (and the host
time of enqueuing each). Host time: the thread CPU time (time.thread_time) of each loop over its timed
frames, per frame, averaged over threads; cores: all loops' thread CPU seconds per wall second (Python code
runs on one core at a time under the GIL, so near 1.0 the interpreter is what limits the rate). Then, in
runs of their own, (b)'s and (d)'s host time per frame split by call (submit_frame / wait; enqueue /
synchronize), pinned frames, at 1 camera and the most cameras.
Batching: for N cameras, one thread with one batched slot (a dynamic-batch plan, batch N, K=2, the rows
letterboxed on the GPU) against (b) with N per-camera slots, pinned frames: fps, and the latency of each
frame from its submission to its result (p50/p99; in this saturated loop mostly the K frames queued ahead).
Preprocessing: edge's kernel against OpenCV's CPU letterbox (edge.letterbox.letterbox_into) on the same
frames, and the kernel's output against the CPU's.

Camera mode (`--mode cameras`, issue 18's benchmark; benchmarks/gpu_cameras.py): N cameras reading a 1080p H.264
clip through the whole daemon, with hardware and with CPU decode, against decode alone and the engine alone.

Usage: python3 benchmarks/gpu_pipeline.py [--networks random,real] [--onnx FILE] [--cameras 1,2,4,8]
       [--frames 600] [--warmup 50] [--reps 3] [--iterations 300] [--out FILE]
       python3 benchmarks/gpu_pipeline.py --mode cameras --clip CLIP [--networks real] [--cameras 1,4,8]
       [--seconds 10] [--out FILE]
Prints the tables and the targets; writes JSON to --out, else to $OUT/gpu_pipeline.json (camera mode:
$OUT/gpu_cameras.json) when $OUT is set.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

if __package__ in (None, ""):       # run as `python3 benchmarks/gpu_pipeline.py`: the checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_loops import (  # noqa: E402
    DEPTH,
    HEIGHT,
    KINDS,
    SOURCES,
    WIDTH,
    CallClock,
    Loop,
    Run,
    batch_lane,
    edge_lane,
    ideal_bound,
    measure,
    minimal_lane,
    preprocessing,
    serial_loop,
    stage_times,
)
from benchmarks.pipeline_report import as_json, bound_note, compare_networks, machine, print_report, targets  # noqa: E402
from benchmarks.pipeline_setup import Setup, build, in_fresh_thread, prime, synthetic_frames, teardown  # noqa: E402
from edge.gpu import cuda  # noqa: E402

NETWORKS = ("random", "real")


# --- the runs ----------------------------------------------------------------------------------------------

def one_run(setup: Setup, kind: str, source: str, cameras: int, frames: int, warmup: int) -> Run:
    if kind == "a":
        loop = serial_loop(setup.context, setup.cameras[:cameras], source, setup.frames, cameras * frames, warmup)
        return measure([loop], cameras * frames)
    if kind in ("b", "g"):
        latencies: list[float] = []
        feeds = setup.feeds if kind == "b" else setup.graph_feeds
        return measure([edge_lane(feed, source, frames, warmup, CallClock(), latencies) for feed in feeds[:cameras]],
                       frames, latencies)
    return measure([minimal_lane(setup.context, camera, source, setup.frames, frames, warmup, CallClock())
                    for camera in setup.cameras[:cameras]], frames)


def host_split(setup: Setup, cameras: int, frames: int, warmup: int) -> dict[str, dict[str, float]]:
    """Host ms per frame in each call of (b) (submit_frame, wait) and of (d) (synchronize, enqueue), pinned
    frames: thread CPU time around the calls, in runs of their own (the clock reads cost a little)."""
    makers: dict[str, Callable[[int, CallClock], Loop]] = {
        "b": lambda i, clock: edge_lane(setup.feeds[i], "pinned", frames, warmup, clock),
        "g": lambda i, clock: edge_lane(setup.graph_feeds[i], "pinned", frames, warmup, clock),
        "d": lambda i, clock: minimal_lane(setup.context, setup.cameras[i], "pinned", setup.frames, frames, warmup,
                                           clock)}
    split = {}
    for kind, make in makers.items():
        clocks = [CallClock(warmup, counting=True) for _ in range(cameras)]
        measure([make(i, clock) for i, clock in enumerate(clocks)], frames)
        total: collections.Counter[str] = collections.Counter()
        for clock in clocks:
            total.update(clock.seconds)
        split[kind] = {name: round(seconds / (cameras * frames) * 1e3, 4) for name, seconds in total.items()}
    return split


def all_runs(setup: Setup, cameras: Sequence[int], frames: int, warmup: int, reps: int
             ) -> dict[str, dict[int, dict[str, list[Run]]]]:
    """Every (source, cameras, kind) --reps times, and the batched slots (pinned frames, kind "batch"),
    interleaved so that drift hits them alike."""
    runs: dict[str, dict[int, dict[str, list[Run]]]] = {
        source: {n: {kind: [] for kind in KINDS} for n in cameras} for source in SOURCES}
    for n in cameras:
        runs["pinned"][n]["batch"] = []
    for rep in range(reps):
        for source in SOURCES:
            for n in cameras:
                for kind in KINDS:
                    runs[source][n][kind].append(one_run(setup, kind, source, n, frames, warmup))
                if source == "pinned":
                    latencies: list[float] = []
                    runs[source][n]["batch"].append(measure([batch_lane(setup.batch_feeds[n], frames, warmup,
                                                                        latencies)], n * frames, latencies))
        print(f"  rep {rep + 1}/{reps} done", flush=True)
    return runs


def median_run(reps: Sequence[Run]) -> Run:
    return Run(*(statistics.median(getattr(r, field.name) for r in reps) for field in dataclasses.fields(Run)))


def summarize(runs: dict[str, dict[int, dict[str, list[Run]]]]) -> dict[str, dict[int, dict[str, Run]]]:
    return {source: {n: {kind: median_run(reps) for kind, reps in by_kind.items()} for n, by_kind in by_cameras.items()}
            for source, by_cameras in runs.items()}


def measure_all(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    edge_first, graph_first = prime(setup)
    stages, enqueue_host = stage_times(setup.drv, setup.cameras[0], args.iterations)
    minimal_first = setup.cameras[0].records[0].host_outputs       # frame 0 again, left by the stage run
    outputs_difference = max(float(np.abs(edge[name] - minimal_first[name]).max())
                             for edge in (edge_first, graph_first) for name in minimal_first)
    pre = preprocessing(setup.drv, setup.cameras[0], setup.frames, stages, setup.stand_in.NET, args.iterations)
    print("stages and preprocessing measured; runs:", flush=True)
    runs = all_runs(setup, args.cameras, args.frames, args.warmup, args.reps)
    split = {n: host_split(setup, n, args.frames, args.warmup) for n in sorted({1, max(args.cameras)})}
    summary = summarize(runs)
    bound = ideal_bound(stages)
    holds = bound_note(bound, summary)
    report = {
        "machine": machine(setup.drv), "stand_in": setup.network.name,
        "settings": {"frame": [WIDTH, HEIGHT], "net_input": list(setup.stand_in.NET), "depth": DEPTH,
                     "cameras": list(args.cameras), "frames_per_camera": args.frames, "warmup": args.warmup,
                     "reps": args.reps, "iterations": args.iterations, "edge_copy_mode": setup.engine.copy_mode},
        "stages_ms": stages, "enqueue_host_ms": enqueue_host, "ideal_bound": bound, "ideal_bound_holds": holds,
        "preprocessing": pre, "outputs_max_difference": outputs_difference, "results": as_json(summary),
        "host_split_ms": as_json(split), "runs": as_json(runs), "targets": targets(summary, bound, holds, pre)}
    print_report(report, summary)
    return report


def networks(names: Sequence[str], onnx: Path | None) -> dict[str, Callable[[], Any]]:
    """name -> a maker of that stand-in network (torch with CUDA: the device machine)."""
    from benchmarks import onnx_engine, torch_engine

    makers = {"random": torch_engine.network, "real": lambda: onnx_engine.network(onnx)}
    return {name: makers[name] for name in names}


def frames_mode(args: argparse.Namespace, stand_in: ModuleType, context: cuda.Context) -> dict[str, Any]:
    """The frame-source measurements for each network in turn, then their rates side by side."""
    frames = synthetic_frames()
    reports: dict[str, Any] = {}
    for name, make in networks(args.networks, args.onnx).items():
        print(f"network {name}:", flush=True)
        with tempfile.TemporaryDirectory() as plan_dir:
            setup = build(stand_in, make(), context, frames, args.cameras, Path(plan_dir))
            try:
                reports[name] = measure_all(setup, args)
            finally:
                teardown(setup)
    return {"benchmark": "gpu_pipeline", "networks": reports, "comparison": compare_networks(reports)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("frames", "cameras"), default="frames",
                        help="frames: decoded frames from memory (default); cameras: a clip decoded by N cameras")
    parser.add_argument("--networks", default=None, type=network_names,
                        help="stand-in networks, comma-separated: random (random weights), real (the demo ONNX);"
                             " default random,real (camera mode: real)")
    parser.add_argument("--onnx", type=Path, help="the real network's ONNX (default: the demo's fp16 variant in the"
                                                   " asset cache, $EDGE_CACHE)")
    parser.add_argument("--cameras", default=None, type=camera_counts,
                        help="camera counts, comma-separated (default 1,2,4,8; camera mode 1,4,8)")
    parser.add_argument("--clip", type=Path, help="camera mode: the 1080p H.264 clip every camera reads")
    parser.add_argument("--make-clip", type=Path, metavar="CLIP",
                        help="write the camera mode's clip (tests/support/clips.py's h264-1080p: the demo video"
                             " at 1080p, H.264; needs PyAV) and exit")
    parser.add_argument("--seconds", type=float, default=10.0, help="camera mode: timed seconds of each run")
    parser.add_argument("--frames", type=positive, default=600, help="timed frames per camera and run")
    parser.add_argument("--warmup", type=positive, default=50, help="untimed frames per camera before each run")
    parser.add_argument("--reps", type=positive, default=3, help="runs of each measurement (medians reported)")
    parser.add_argument("--iterations", type=positive, default=300, help="frames for stage and CPU letterbox times")
    parser.add_argument("--out", type=Path, help="JSON report (default: $OUT/gpu_pipeline.json when $OUT is set)")
    args = parser.parse_args(argv)
    cameras = args.mode == "cameras"
    args.networks = args.networks or (["real"] if cameras else list(NETWORKS))
    args.cameras = args.cameras or ([1, 4, 8] if cameras else [1, 2, 4, 8])
    if cameras and args.clip is None:
        parser.error("--mode cameras needs --clip: a 1080p H.264 clip (make one with --make-clip CLIP)")
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / ("gpu_cameras.json" if cameras else "gpu_pipeline.json")
    return args


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def camera_counts(text: str) -> list[int]:
    try:
        counts = sorted({positive(part) for part in text.split(",")})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected camera counts like 1,2,4,8, got {text!r}") from exc
    return counts


def network_names(text: str) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [name for name in names if name not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown network(s) {unknown} in {text!r}: give {', '.join(NETWORKS)}")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.make_clip:
        from benchmarks.gpu_cameras import check_clip
        from tests.support import clips

        check_clip(clips.encode(clips.CLIPS["h264-1080p"], args.make_clip))
        print(f"wrote {args.make_clip}")
        return
    from benchmarks import gpu_cameras, graph_engine  # torch with CUDA: the device machine

    context = cuda.Context(0)
    try:
        with context.current():
            if args.mode == "cameras":
                report = gpu_cameras.camera_mode(args, graph_engine, networks(args.networks, args.onnx))
            else:
                report = frames_mode(args, graph_engine, context)
    finally:
        in_fresh_thread(context.detach)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
