"""RTSP cameras against a real RTSP server (issue 20): N streams of a pre-encoded 30 fps H.264 clip (720p, 1080p)
served by GStreamer's RTSP server (tests/support/rtsp.py) with filesrc ! qtdemux ! h264parse ! rtph264pay, no
re-encode, so the server side stays cheap; each stream read by edge's Camera (CPU decode: OpenCV/FFmpeg), and in the
same run the same clip as a `file://` camera (paced at its rate) as the baseline.

Per row over --seconds after a warm-up: fps = frames the cameras handed to a reader thread per stream / s; CPU ms per
frame = this process's CPU time (decode, camera and reader threads; not the server's) / frames; latency p50/p99 =
when a reader thread took the frame from the camera's LatestFrame - the frame's t_capture_ns. For RTSP that is the
server's stream time on this host's CLOCK_MONOTONIC (edge/pipeline/clock.py: late by the least delay seen, so the
figure understates by that, docs/protocol.md "Capture time"); for a file the time the camera read it. No lanes run:
the result is the frame handed over, not a published message.

--results: the whole daemon instead (benchmarks/daemon_results.py): every camera feeds a lane of the demo detector
(ONNX Runtime, fp32, on the CPU), and the latency is glass to result, t_publish_ns - t_capture_ns of each published
message; fps = results published per stream and second (a lane takes the latest frame: on a machine that cannot
keep up it skips frames, and the fps says so). Prints a table and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from benchmarks.daemon_results import run_daemon
from edge.config.cameras import parse_uri
from edge.engines.onnxruntime import cpu_facts
from edge.files import default_cache_dir
from edge.pipeline.cameras import Camera, EndOfStream
from tests.support import rtsp
from tests.support.clips import VTEST

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 30
CLIP_FRAMES = 450                # 15 s at 30 fps: longer than a row's warm-up + --seconds
WARMUP_S = 2.0


def make_clip(size: str) -> Path:
    """The demo video at `size`, 30 fps, H.264 without B-frames (as a camera sends it), cached; needs PyAV."""
    import av

    width, height = SIZES[size]
    path = default_cache_dir() / "clips" / f"rtsp-bench-h264-{width}x{height}-{FPS}fps-{CLIP_FRAMES}f-v2.mp4"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.mp4")
    with av.open(str(default_cache_dir() / VTEST)) as video, av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "g": str(FPS)}
        for index, frame in enumerate(video.decode(video=0)):
            if index == CLIP_FRAMES:
                break
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            scaled.pts, scaled.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    partial.rename(path)
    return path


def measure(uris: list[str], seconds: float) -> dict[str, Any]:
    """Cameras on `uris`, one reader thread each: fps per stream, CPU ms per frame, latency p50/p99 in ms."""
    cameras = [Camera(f"cam{i}", parse_uri(uri), on_event=lambda *_: None) for i, uri in enumerate(uris)]
    latencies: list[list[int]] = [[] for _ in cameras]
    counting = threading.Event()
    stop = threading.Event()

    def take(camera: Camera, out: list[int]) -> None:
        reader, index = camera.latest.register(), -1
        while not stop.is_set():
            try:
                frame = camera.latest.get_after(reader, index, 0.5)
            except EndOfStream:             # stopped
                return
            if frame is not None:
                index = frame.index
                if counting.is_set():
                    out.append(time.monotonic_ns() - frame.t_capture_ns)

    threads = [threading.Thread(target=take, args=(c, out), daemon=True) for c, out in zip(cameras, latencies)]
    for camera in cameras:
        camera.start()
    for thread in threads:
        thread.start()
    stop.wait(WARMUP_S)
    cpu0, wall0 = time.process_time(), time.monotonic()
    counting.set()
    stop.wait(seconds)
    counting.clear()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stop.set()
    for camera in cameras:
        camera.stop(5.0)
    untimed = sum(c.clock.stats.untimed for c in cameras if c.clock is not None)
    every = [ns / 1e6 for out in latencies for ns in out]
    return {**figures(len(every), len(uris), cpu, wall, every), "untimed": untimed}


def figures(frames: int, streams: int, cpu_s: float, wall_s: float, latencies_ms: list[float]) -> dict[str, Any]:
    """A row's figures from a window's frames (or results), CPU and wall seconds and latencies."""
    every = sorted(latencies_ms)
    return {"fps_per_stream": frames / wall_s / streams, "cpu_ms_per_frame": 1000 * cpu_s / max(frames, 1),
            "latency_ms_p50": statistics.median(every) if every else None,
            "latency_ms_p99": every[min(len(every) - 1, int(0.99 * len(every)))] if every else None,
            "frames": frames}


def measure_results(uris: list[str], seconds: float, work: Path) -> dict[str, Any]:
    """The daemon with the demo detector on `uris`: results per stream and second, CPU ms per result, glass-to-result
    latency p50/p99 in ms."""
    from edge.config.loader import parse_config

    endpoint = f"ipc://{work}/results.sock"
    names = [f"cam{i}" for i in range(len(uris))]
    text = ("version: 1\ncameras:\n" + "".join(f"  - id: {n}\n    uri: {u}\n" for n, u in zip(names, uris))
            + f"tasks:\n  - name: objects\n    type: detector\n    engines: {default_cache_dir()}/engines/yolov3-tiny\n"
              f"    precision: fp32\n    cameras: [{', '.join(names)}]\n"
              f"output:\n  results: {endpoint}\nsupervisor:\n  enabled: false\n")
    config = parse_config(text, source="rtsp benchmark", base_dir=work, environ={})
    window = run_daemon(config, endpoint, seconds, f"rtsp benchmark ({len(uris)} cameras)")
    return figures(window.frames, len(uris), window.cpu_s, window.wall_s, window.latencies_ms)


def run(size: str, streams: int, seconds: float, results: bool) -> list[dict[str, Any]]:
    from tests.conftest import free_port

    clip = make_clip(size)
    with tempfile.TemporaryDirectory() as work:
        def row(uris: list[str]) -> dict[str, Any]:
            return measure_results(uris, seconds, Path(work)) if results else measure(uris, seconds)

        rows = [{"path": "file", "size": size, "streams": streams, **row([f"file://{clip}?loop=1"] * streams)}]
        ports = [free_port() for _ in range(streams)]
        servers = [rtsp.serve(port, rtsp.clip(clip), shared=False) for port in ports]
        try:
            rows.append({"path": "rtsp", "size": size, "streams": streams,
                         **row([f"rtsp://127.0.0.1:{port}/live" for port in ports])})
        finally:
            for server in servers:
                server.kill()
                server.wait()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["720p", "1080p"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--results", action="store_true",
                        help="run the daemon with the demo detector: glass-to-result latency of published messages")
    parser.add_argument("--json", type=Path, default=Path("rtsp-benchmark.json"))
    args = parser.parse_args(argv)
    try:
        rtsp.require(rtsp.clip(Path("/dev/null")))
    except pytest.skip.Exception as missing:       # the tests' helper skips; here it is the benchmark's answer
        print(f"rtsp benchmark: {missing}", file=sys.stderr)
        return 2
    rows = [row for size in args.sizes for streams in args.streams
            for row in run(size, streams, args.seconds, args.results)]
    machine = {**cpu_facts(), "cores": os.cpu_count(), "python": platform.python_version()}
    latency = ("result published (t_publish_ns), demo detector fp32 on ONNX Runtime" if args.results
               else "frame handed to a reader")
    print(f"{machine['cpu']} (flags: {', '.join(machine['flags']) or '-'}), {machine['cores']} cores; CPU decode;"
          f" latency: {latency} - t_capture_ns")
    print(f"{'path':<5} {'size':<6} {'streams':>7} {'fps/stream':>10} {'CPU ms/frame':>12} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'vs file CPU':>11}")
    baseline = {(r["size"], r["streams"]): r for r in rows if r["path"] == "file"}
    for row in rows:
        base = baseline[(row["size"], row["streams"])]
        ratio = row["cpu_ms_per_frame"] / base["cpu_ms_per_frame"] if base["cpu_ms_per_frame"] else float("nan")
        p50, p99 = (f"{row[k]:.1f}" if row[k] is not None else "-" for k in ("latency_ms_p50", "latency_ms_p99"))
        print(f"{row['path']:<5} {row['size']:<6} {row['streams']:>7} {row['fps_per_stream']:>10.1f}"
              f" {row['cpu_ms_per_frame']:>12.2f} {p50:>7} {p99:>7} {ratio:>11.2f}")
    report = {"machine": machine, "seconds": args.seconds, "results": args.results, "rows": rows}
    args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
