"""Camera mode of benchmarks/gpu_pipeline.py (issue 18's benchmark): N cameras each reading the same 1080p H.264 clip.

- (e) edge, `decode: nvdec`, and (f) edge, CPU decode (OpenCV/FFmpeg, as today): the whole daemon in this process
  (edge.daemon.service.Service: cameras, lanes, the TensorRT stand-in with the GPU letterbox and `cuda_graph: true`,
  postprocessing, the publisher), every camera `file://CLIP?realtime=0&loop=1`: lossless, so the cameras decode as
  fast as the lanes take frames and none is dropped.
- decode only, NVDEC and CPU: one thread per stream reading frames through edge's camera readers, no engine.
- engine only: edge's graph-mode slots on 1080p frames already in pinned memory (the frame mode's (g)).

Figures over --seconds after a warm-up: fps = frames processed (decoded, for decode only) / wall seconds; host CPU
ms per frame = this process's CPU time (every thread: decode, lanes, publisher) / frames; cores = CPU seconds per
wall second; latency = a result's t_publish_ns - its frame's t_capture_ns (when the camera had the frame: after
the CPU decoded it; when NVDEC handed over the surface), read by a subscriber in a process of its own so its CPU
time is not counted. Engine only: per lane thread CPU time and submission-to-result latency, as in the frame mode.

The clip: tests/support/clips.py's "h264-1080p" (300 frames of the demo video at 1080p, H.264, BT.709), written by
`--make-clip CLIP` where PyAV is (the device machine has no encoder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.daemon_results import WARMUP_S, run_daemon
from benchmarks.pipeline_loops import DEPTH, HEIGHT, WIDTH, CallClock, Run, edge_lane, measure
from benchmarks.pipeline_report import as_json, target
from benchmarks.pipeline_setup import SlotFeed, edge_engine, in_fresh_thread, synthetic_frames
from edge.config.cameras import MAX_FRAME, parse_uri
from edge.pipeline.lanes import INFER_TIMEOUT_S

KINDS = {"e": "(e) edge, NVDEC", "f": "(f) edge, CPU decode", "nvdec": "NVDEC only", "cpu": "CPU decode only",
         "engine": "engine only"}
Row = dict[str, Run]            # kind -> its run


def check_clip(clip: Path) -> None:
    """A readable 1080p H.264 file, or a RuntimeError that says what it is."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    try:
        if not capture.isOpened():
            raise RuntimeError(f"--clip {clip}: OpenCV cannot open it")
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        capture.release()
    if size != (WIDTH, HEIGHT) or fourcc.lower() not in ("avc1", "h264"):
        raise RuntimeError(f"--clip {clip} is {fourcc} {size[0]}x{size[1]}; the camera mode reads 1080p H.264"
                           " (make one with benchmarks/gpu_pipeline.py --make-clip CLIP)")


# --- the daemon: (e) and (f) --------------------------------------------------------------------------------

def daemon_config(repo: Path, clip: Path, cameras: int, decode: str, endpoint: str) -> str:
    decode_line = f"    decode: {decode}\n"
    ids = [f"cam{index}" for index in range(cameras)]
    return ("version: 1\ncameras:\n"
            + "".join(f"  - id: {cam}\n    uri: file://{clip}?realtime=0&loop=1\n{decode_line}" for cam in ids)
            + f"tasks:\n  - name: objects\n    type: detector\n    engines: {repo}\n    allow_onnx: false\n"
              f"    backend: tensorrt\n    cuda_graph: true\n    cameras: [{', '.join(ids)}]\n"
              f"output:\n  results: {endpoint}\nsupervisor:\n  enabled: false\n")


def edge_run(repo: Path, clip: Path, cameras: int, decode: str, seconds: float, work: Path) -> Run:
    """The daemon on `cameras` cameras of the clip: fps, process CPU per frame, latency over `seconds`."""
    from edge.config.loader import parse_config

    endpoint = f"ipc://{work}/results-{decode}-{cameras}.sock"
    config = parse_config(daemon_config(repo, clip, cameras, decode, endpoint), source=f"camera mode ({decode})",
                          base_dir=work, environ={})
    window = run_daemon(config, endpoint, seconds, f"camera mode ({decode}, {cameras} cameras)", in_fresh_thread)
    return _run(window.frames, window.cpu_s, window.wall_s, window.latencies_ms)


def _run(frames: int, cpu: float, wall: float, latencies: Sequence[float]) -> Run:
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if latencies else (float("nan"),) * 2
    return Run(frames / wall, cpu / frames * 1e3, cpu / wall, p50, p99)


# --- decode only ---------------------------------------------------------------------------------------------

def open_decoder(clip: Path, decode: str) -> Any:
    """One of edge's camera readers on the clip: CPU decode (OpenCV/FFmpeg) or NVDEC (edge/pipeline/nvdec.py)."""
    from edge.pipeline import nvdec, readers

    uri = parse_uri(f"file://{clip}")
    return readers.open_reader(uri) if decode == "cpu" else nvdec.open_nvdec_reader(uri, MAX_FRAME, surfaces=2)


def decode_only(clip: Path, streams: int, decode: str, seconds: float) -> Run:
    """One thread per stream reading the clip (reopened at its end) through edge's reader, nothing else: fps and
    process CPU per frame over `seconds` after the warm-up. A device frame is released at once."""
    counts = [0] * streams
    stop = threading.Event()
    errors: list[BaseException] = []

    def read(index: int) -> None:
        try:
            reader = open_decoder(clip, decode)
            while not stop.is_set():
                frame = reader.read()
                if frame is None:
                    reader.close()
                    reader = open_decoder(clip, decode)
                    continue
                if not isinstance(frame, np.ndarray):
                    frame.release(None)         # a DeviceFrame: back to the reader's pool, nothing enqueued on it
                counts[index] += 1
            reader.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the measuring thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,), name=f"decode-{i}") for i in range(streams)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(WARMUP_S)
        frames, cpu, wall = sum(counts), time.process_time(), time.perf_counter()
        time.sleep(seconds)
        frames, cpu, wall = sum(counts) - frames, time.process_time() - cpu, time.perf_counter() - wall
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if errors:
        raise errors[0]
    return _run(frames, cpu, wall, [])


# --- engine only ---------------------------------------------------------------------------------------------

def engine_only(stand_in: ModuleType, network: Any, counts: Sequence[int], frames: int, warmup: int,
                plan_dir: Path) -> dict[int, Run]:
    """Edge's graph-mode slots, one per camera, on pinned 1080p frames (the frame mode's (g)) at each count."""
    engine = edge_engine(stand_in, network, plan_dir, cuda_graph=True)
    try:
        images = synthetic_frames()
        with engine.context.current():
            feeds = [SlotFeed(engine.create_slot(f"cam{index}", depth=DEPTH), images) for index in range(max(counts))]
        for feed in feeds:                      # each record: its first frame as it is, then its capture, a launch
            for _ in range(2 * DEPTH):
                feed.slot.submit_frame(feed.next("pinned"))[0].wait(INFER_TIMEOUT_S)
        results = {}
        for n in counts:
            latencies: list[float] = []
            results[n] = measure([edge_lane(feed, "pinned", frames, warmup, CallClock(), latencies)
                                  for feed in feeds[:n]], frames, latencies)
        return results
    finally:
        in_fresh_thread(engine.deactivate)


# --- the mode ------------------------------------------------------------------------------------------------

def camera_mode(args: argparse.Namespace, stand_in: ModuleType, networks: dict[str, Callable[[], Any]]
                ) -> dict[str, Any]:
    """Every row of the camera mode for each network; prints the tables and the targets; the JSON report."""
    import pycuda.driver as drv

    from benchmarks import onnx_engine
    from benchmarks.pipeline_report import machine

    check_clip(args.clip)
    report: dict[str, Any] = {"benchmark": "gpu_pipeline, camera mode", "clip": str(args.clip),
                              "settings": {"cameras": list(args.cameras), "seconds": args.seconds,
                                           "warmup_s": WARMUP_S, "engine_only_frames": args.frames},
                              "networks": {}}
    for name, make in networks.items():
        network = make()
        sys.modules["tensorrt"] = stand_in.tensorrt_module(network)
        rows: dict[int, Row] = {}
        with tempfile.TemporaryDirectory() as work:
            repo = onnx_engine.engine_repository(Path(work) / "repo", args.onnx)
            engine = engine_only(stand_in, network, args.cameras, args.frames, args.warmup, Path(work))
            for n in args.cameras:
                rows[n] = {"engine": engine[n],
                           "e": edge_run(repo, args.clip, n, "nvdec", args.seconds, Path(work)),
                           "f": edge_run(repo, args.clip, n, "cpu", args.seconds, Path(work)),
                           "nvdec": decode_only(args.clip, n, "nvdec", args.seconds),
                           "cpu": decode_only(args.clip, n, "cpu", args.seconds)}
                print(f"  {name}: {n} camera(s) done", flush=True)
        report["networks"][name] = {"stand_in": network.name, "rows": as_json(rows),
                                    "targets": camera_targets(rows)}
        print_cameras(name, network.name, rows, report["networks"][name]["targets"])
    report["machine"] = machine(drv)
    return report


def camera_targets(rows: dict[int, Row]) -> list[dict[str, Any]]:
    """Issue 18's targets at the most cameras."""
    n = max(rows)
    row = rows[n]
    e, f, nvdec, engine = row["e"], row["f"], row["nvdec"], row["engine"]
    per_core = lambda run: run.fps / run.cores  # noqa: E731
    limit = min(nvdec.fps, engine.fps)
    return [target(f"(e) host CPU <= 0.5 ms per frame including decode at {n} cameras", None, e.host_ms, 0.5,
                   at_most=True),
            target(f"(e) >= 0.9x min(NVDEC only, engine only) at {n} cameras", None, e.fps / limit, 0.9),
            target(f"(e) >= 5x (f) in fps per CPU core at {n} cameras", None, per_core(e) / per_core(f), 5)]


def print_cameras(name: str, stand_in: str, rows: dict[int, Row], targets: list[dict[str, Any]]) -> None:
    print(f"\ncamera mode, network {name} ({stand_in}): fps; host CPU ms per frame incl. decode; cores; latency ms")
    print(f"{'N':>3} " + " ".join(f"{label:>22}" for label in KINDS.values()))
    for n, row in rows.items():
        cells = [f"{row[kind].fps:>7.0f} {row[kind].host_ms:>6.3f} {row[kind].cores:>5.2f}" for kind in KINDS]
        print(f"{n:>3} " + " ".join(f"{cell:>22}" for cell in cells))
    print("latency p50/p99 ms (packet to result): " + "; ".join(
        f"{n} cams " + ", ".join(f"{kind} {row[kind].p50_ms:.2f}/{row[kind].p99_ms:.2f}" for kind in ("e", "f"))
        for n, row in rows.items()))
    for row in targets:
        met = {True: "met    ", False: "NOT met", None: "not measured"}[row["met"]]
        print(f"  {met} {row['target']}: {row['value']} (goal {row['goal']})")
