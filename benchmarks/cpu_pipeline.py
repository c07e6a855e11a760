"""CPU pipeline benchmark on the demo video (ONNX Runtime CPU), baselines in the same run.

  (a) raw engine: session.run back to back on ready tensors (also for the fp16 and int8 variants, and
      int8 with ONNX Runtime's precise mode forced on)
  (b) naive loop: decode -> preprocess -> infer -> postprocess -> publish, one thread
  (c) the edge pipeline (Service) with 1 lane and with 2 lanes (two cameras on the video; default
      ORT threads = cores / lanes, and, to show why, 2 threads per lane)
  (d) the edge pipeline at the video's native 10 fps: capture -> publish latency

Prints a table and writes JSON. Usage: python benchmarks/cpu_pipeline.py [--frames 200] [--repeat 3] [--out FILE]
Throughput runs read the file as fast as the pipeline takes frames (realtime=0, nothing dropped).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from edge.config.loader import parse_config
from edge.config.schema import TaskConfig
from edge.daemon.service import Service
from edge.engines.onnxruntime import OnnxRuntimeEngine, cpu_facts, session_options
from edge.tasks import build_task
from edge.tools import assets
from edge.wire import protocol
from edge.wire.client import Subscriber

TASK = TaskConfig(name="objects", type="detector", model="x", cameras=["c"])
SOCKETS = tempfile.TemporaryDirectory(prefix="edge-bench-")   # the runs' ipc socket (removed at exit), not in the cache


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        frames.append(image)
    return frames


def _plain_session(model: Path, int8_precise: bool | None = None) -> Any:
    """ONNX Runtime with its defaults (all cores, spinning pool): the strongest plain baseline. It takes
    edge's INT8 precision setting too, so an INT8 row is never the fast but wrong saturating kernel."""
    import onnxruntime

    options = session_options(spinning=True, int8_precise=int8_precise)
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def raw_engine(model: Path, video: Path, count: int, int8_precise: bool | None = None) -> dict[str, Any]:
    session = _plain_session(model, int8_precise)
    with OnnxRuntimeEngine(model) as engine:
        task = build_task(TASK, engine)
    tensors = []
    for image in read_frames(video, min(count, 50)):
        buf = np.zeros((1, 3, 416, 416), np.float32)
        task.preprocess(image, buf)
        tensors.append(buf)
    session.run(None, {"images": tensors[0]})
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(count):
        session.run(None, {"images": tensors[i % len(tensors)]})
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"frames": count, "fps": count / wall, "cpu_ms_per_frame": cpu / count * 1e3}


def naive_loop(model: Path, video: Path, count: int) -> dict[str, Any]:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    session = _plain_session(model)
    with OnnxRuntimeEngine(model) as engine:
        task = build_task(TASK, engine)
        names = [o.name for o in engine.outputs]
    buf = np.zeros((1, 3, 416, 416), np.float32)
    session.run(None, {"images": buf})
    capture = cv2.VideoCapture(str(video))
    cpu0, t0 = time.process_time(), time.perf_counter()
    for seq in range(count):
        ok, image = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = capture.read()
        meta = task.preprocess(image, buf)
        dets = task.postprocess(dict(zip(names, session.run(None, {"images": buf}))), meta)
        pub.send_multipart([b"det.objects.cam0", protocol.pack({"v": 1, "seq": seq, "detections": dets.tolist()})])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    pub.close()
    context.term()
    return {"frames": count, "fps": count / wall, "cpu_ms_per_frame": cpu / count * 1e3}


def edge_pipeline(root: Path, count: int, lanes: int, *, realtime: bool, threads: int | None = None,
                  precision: str = "fp32") -> dict[str, Any]:
    cams = "".join(f"  - id: cam{i}\n    uri: file://{root}/media/vtest.avi?realtime={int(realtime)}&loop=1\n"
                   for i in range(lanes))
    text = (f"version: 1\ncameras:\n{cams}tasks:\n  - name: objects\n    type: detector\n"
            f"    engines: {root}/engines/yolov3-tiny\n    precision: {precision}\n"
            f"    cameras: [{', '.join(f'cam{i}' for i in range(lanes))}]\n"
            + (f"    threads: {threads}\n" if threads else "") +
            f"output:\n  results: ipc://{SOCKETS.name}/results.sock\ncontrol:\n  endpoint: ipc://{SOCKETS.name}/control.sock\n"
            "logging:\n  level: warning\n")
    config = parse_config(text, source="benchmark", base_dir=root, environ={})
    service = Service(config, max_frames=count, wait_subscriber_s=30)
    latencies: list[float] = []
    sub = Subscriber(config.output.results, topics=["det."])
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            msg = sub.recv(timeout=0.1)
            if msg is not None:
                latencies.append((msg.payload["t_publish_ns"] - msg.payload["t_capture_ns"]) / 1e6)
    reader = threading.Thread(target=consume)
    reader.start()
    service.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    service.run(threading.Event())
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = [lane.stats for lane in service.lanes]
    service.stop()
    done.set()
    reader.join()
    sub.close()
    processed = sum(s.processed for s in stats)
    latencies.sort()
    return {"lanes": lanes, "realtime": realtime, "threads": threads, "frames": processed, "fps": processed / wall,
            "cpu_ms_per_frame": cpu / processed * 1e3, "received": len(latencies), "missed": sub.missed,
            "dropped_camera": sum(s.dropped_camera for s in stats),
            "latency_ms_p50": statistics.median(latencies),
            "latency_ms_p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over repeated runs; the per-run fps are kept too."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["fps_runs"] = [round(r["fps"], 2) for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="frames per throughput run (all lanes together)")
    parser.add_argument("--realtime-frames", type=int, default=150, help="frames for the 10 fps latency run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_pipeline.json"))
    args = parser.parse_args()
    demo = assets.fetch(say=lambda line: None)
    runs: dict[str, Any] = {
        "a_raw_engine": lambda: raw_engine(demo.model, demo.video, args.frames),
        "a_raw_engine_fp16": lambda: raw_engine(demo.variant("fp16"), demo.video, args.frames),
        "a_raw_engine_int8": lambda: raw_engine(demo.variant("int8"), demo.video, args.frames),
        # precise mode forced on: what the fix for CPUs without VNNI would cost where it is not needed
        "a_raw_engine_int8_precise": lambda: raw_engine(demo.variant("int8"), demo.video, args.frames, True),
        "b_naive_loop": lambda: naive_loop(demo.model, demo.video, args.frames),
        "c_edge_1_lane": lambda: edge_pipeline(demo.root, args.frames, 1, realtime=False),
        "c_edge_1_lane_int8": lambda: edge_pipeline(demo.root, args.frames, 1, realtime=False, precision="int8"),
        "c_edge_2_lanes": lambda: edge_pipeline(demo.root, args.frames // 2, 2, realtime=False),
        "c_edge_2_lanes_2t": lambda: edge_pipeline(demo.root, args.frames // 2, 2, realtime=False, threads=2),
        "d_edge_10fps": lambda: edge_pipeline(demo.root, args.realtime_frames, 1, realtime=True),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(args.repeat):                       # interleaved, so drift hits every configuration alike
        for name, run in runs.items():
            samples[name].append(run())
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
               "onnxruntime": __import__("onnxruntime").__version__}
    results: dict[str, Any] = {"machine": machine, "repeat": args.repeat}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags']) or '-'}"
          f" (VNNI {'yes' if machine['vnni'] else 'no'}), INT8 precise mode {machine['int8_precise_mode']},"
          f" onnxruntime {machine['onnxruntime']}")
    results.update({name: median_of(rs) for name, rs in samples.items()})
    raw, naive = results["a_raw_engine"], results["b_naive_loop"]
    print(f"{'run':18} {'fps':>6} {'x raw':>6} {'x naive':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu ms/f':>8} {'outside':>8}")
    for name in runs:
        r = results[name]
        same = raw if name.startswith("a_") else results.get(f"a_raw_engine_{name.rsplit('_', 1)[-1]}", raw)
        r["ratio_to_raw"] = r["fps"] / same["fps"]           # against the raw engine of the same precision
        r["ratio_to_naive"] = r["fps"] / naive["fps"]
        raw_row = name.startswith("a_")
        r["cpu_ms_outside_engine"] = None if raw_row else r["cpu_ms_per_frame"] - same["cpu_ms_per_frame"]
        p50 = f"{r['latency_ms_p50']:.1f}" if "latency_ms_p50" in r else "-"
        p99 = f"{r['latency_ms_p99']:.1f}" if "latency_ms_p99" in r else "-"
        outside = "-" if raw_row else f"{r['cpu_ms_outside_engine']:.1f}"
        print(f"{name:18} {r['fps']:6.1f} {r['ratio_to_raw']:6.2f} {r['ratio_to_naive']:7.2f} {p50:>7} {p99:>7} "
              f"{r['cpu_ms_per_frame']:8.1f} {outside:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"medians of {args.repeat} runs; wrote {args.out}")


if __name__ == "__main__":
    main()
