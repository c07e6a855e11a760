"""Batching across cameras on the CPU (ONNX Runtime): a task's cameras as one batch (`batch: true`) against a
lane per camera (the baseline, in the same run), for 1, 2 and 4 cameras (batch = cameras).

Both run the whole daemon (Service) on the demo model (YOLOv3-tiny fp32) made batch-capable: a copy with a
symbolic first dimension, used by both sides so they run the same graph. Threads are edge's defaults: the
cores shared by the lanes, a batched task's cameras counting as one lane.

  throughput   the demo video per camera, read as fast as the pipeline takes frames (realtime=0: nothing
               dropped): results per second over all cameras, and capture -> publish latency
  aligned      test:// cameras of the video's size at --rate fps each, started together (their frames
               arrive within a millisecond or two of each other): latency at a load the CPU can carry
  spread       the same cameras started 1/N of a frame interval apart, as free-running cameras' frames are
               spread over the interval: what the gather wait (up to half an interval) costs

Latency is t_publish - t_capture of every det message a subscriber received. Runs are interleaved and
repeated (--repeat); medians are reported. Prints a table and writes JSON.
Usage: python benchmarks/batching.py [--frames 120] [--rate 6] [--seconds 8] [--repeat 3] [--out FILE]
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.engines.onnxruntime import cpu_facts
from edge.pipeline.cameras import Camera
from edge.tools import assets
from edge.wire.client import Subscriber

CAMERAS = (1, 2, 4)
WORK = tempfile.TemporaryDirectory(prefix="edge-batching-")     # the batch-capable model and the run's sockets


def batch_capable(model: Path) -> Path:
    """A copy of `model` whose input and outputs have a symbolic first dimension (ONNX Runtime: any batch)."""
    graph = onnx.load(str(model))
    for tensor in list(graph.graph.input) + list(graph.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = Path(WORK.name) / model.name.replace(".onnx", ".batch.onnx")
    onnx.save(graph, str(path))
    return path


def config_text(model: Path, uris: list[str], *, batch: bool) -> str:
    cams = "".join(f"  - id: cam{i}\n    uri: {uri}\n" for i, uri in enumerate(uris))
    names = ", ".join(f"cam{i}" for i in range(len(uris)))
    return (f"version: 1\ncameras:\n{cams}tasks:\n  - name: objects\n    type: detector\n    model: {model}\n"
            f"    backend: onnxruntime\n    cameras: [{names}]\n    batch: {str(batch).lower()}\n"
            f"output:\n  results: ipc://{WORK.name}/results.sock\ncontrol:\n  endpoint: ipc://{WORK.name}/control.sock\n"
            "supervisor:\n  enabled: false\nlogging:\n  level: warning\n")


class Collector:
    """A subscriber thread keeping each det message's capture -> publish latency."""

    def __init__(self, endpoint: str) -> None:
        self.latencies_ms: list[float] = []
        self.sub = Subscriber(endpoint, topics=["det."])
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            msg = self.sub.recv(timeout=0.1)
            if msg is not None:
                self.latencies_ms.append((msg.payload["t_publish_ns"] - msg.payload["t_capture_ns"]) / 1e6)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sub.close()


@contextmanager
def staggered(step_s: float) -> Iterator[None]:
    """Cameras started `step_s` apart (the service starts them one after the other)."""
    start = Camera.start
    started: list[Camera] = []

    def later(camera: Camera) -> None:
        if started:
            time.sleep(step_s)
        started.append(camera)
        start(camera)
    Camera.start = later                                # type: ignore[method-assign]
    try:
        yield
    finally:
        Camera.start = start                            # type: ignore[method-assign]


def run_service(text: str, *, max_frames: int | None, seconds: float | None, stagger_s: float = 0.0
                ) -> dict[str, Any]:
    """Run the daemon until its lanes finish (max_frames) or for `seconds`; fps, latency, CPU time, drops."""
    config = parse_config(text, source="benchmark", base_dir=Path(WORK.name), environ={})
    service = Service(config, max_frames=max_frames, wait_subscriber_s=30)
    collector = Collector(config.output.results)
    try:
        with staggered(stagger_s):
            service.start()
        stop = threading.Event()
        if seconds is not None:
            threading.Timer(seconds, stop.set).start()
        cpu0, t0 = time.process_time(), time.perf_counter()
        service.run(stop)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = [lane.stats for lane in service.lanes]
        threads = service.tasks["objects"].active().threads
    finally:
        service.stop()
        collector.close()
    processed = sum(s.processed for s in stats)
    values = sorted(collector.latencies_ms)
    return {"frames": processed, "fps": processed / wall, "cpu_ms_per_frame": cpu / processed * 1e3,
            "ort_threads": threads, "received": len(values), "dropped_camera": sum(s.dropped_camera for s in stats),
            "latency_ms_p50": statistics.median(values),
            "latency_ms_p99": values[min(len(values) - 1, int(0.99 * len(values)))]}


def throughput(model: Path, video: Path, cameras: int, frames: int, *, batch: bool) -> dict[str, Any]:
    uris = [f"file://{video}?realtime=0&loop=1"] * cameras
    return run_service(config_text(model, uris, batch=batch), max_frames=frames // cameras, seconds=None)


def paced(model: Path, cameras: int, rate: float, seconds: float, *, batch: bool, spread: bool) -> dict[str, Any]:
    uris = [f"test://bars?size=768x576&fps={rate:g}"] * cameras
    return run_service(config_text(model, uris, batch=batch), max_frames=None, seconds=seconds,
                       stagger_s=1 / rate / cameras if spread else 0.0)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    for key in ("fps", "latency_ms_p50", "latency_ms_p99"):
        out[f"{key}_runs"] = [round(r[key], 2) for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120, help="frames per throughput run (all cameras together)")
    parser.add_argument("--rate", type=float, default=6.0, help="fps of each camera in the paced runs")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each paced run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batching.json"))
    args = parser.parse_args()
    demo = assets.fetch(say=lambda line: None)
    model = batch_capable(demo.model)
    runs: dict[str, Any] = {}
    for n in CAMERAS:
        for batch in (False, True):
            side = f"batch_{n}" if batch else f"lanes_{n}"
            runs[f"throughput_{side}"] = lambda n=n, batch=batch: throughput(model, demo.video, n, args.frames,
                                                                             batch=batch)
            for spread in (False, True) if n > 1 else (False,):   # one camera: nothing to spread
                runs[f"{'spread' if spread else 'aligned'}_{side}"] = (
                    lambda n=n, batch=batch, spread=spread: paced(model, n, args.rate, args.seconds, batch=batch,
                                                                  spread=spread))
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(args.repeat):                       # interleaved, so drift hits every configuration alike
        for name, run in runs.items():
            samples[name].append(run())
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
               "onnxruntime": __import__("onnxruntime").__version__}
    results: dict[str, Any] = {"machine": machine, "repeat": args.repeat, "frames": args.frames, "rate": args.rate,
                               "seconds": args.seconds}
    results.update({name: median_of(rs) for name, rs in samples.items()})
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, onnxruntime {machine['onnxruntime']};"
          f" medians of {args.repeat} runs")
    print(f"{'run':22} {'cams':>4} {'threads':>7} {'fps':>6} {'x lanes':>7} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'cpu ms/f':>8} {'dropped':>7}")
    for name, r in ((k, v) for k, v in results.items() if k.startswith(("throughput_", "aligned_", "spread_"))):
        mode, side, n = name.split("_")
        r["cameras"], r["batch"] = int(n), side == "batch"
        r["fps_vs_lanes"] = r["fps"] / results[f"{mode}_lanes_{n}"]["fps"]
        print(f"{name:22} {n:>4} {r['ort_threads']:>7} {r['fps']:6.1f} {r['fps_vs_lanes']:7.2f}"
              f" {r['latency_ms_p50']:7.1f} {r['latency_ms_p99']:7.1f} {r['cpu_ms_per_frame']:8.1f}"
              f" {r['dropped_camera']:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
