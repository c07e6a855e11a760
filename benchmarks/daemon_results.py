"""The whole daemon in this process on a config, and its results read by a subscriber in a process of its own: the
figures the camera benchmarks report (benchmarks/gpu_cameras.py, benchmarks/rtsp.py). Frames = results the lanes
processed over the timed window; CPU = this process's CPU time over it (every thread: cameras, decode, lanes, the
publisher; not the subscriber's); latency = each result's t_publish_ns - t_capture_ns (docs/protocol.md)."""
from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

WARMUP_S = 3.0


class Window(NamedTuple):
    frames: int
    cpu_s: float
    wall_s: float
    latencies_ms: list[float]


def subscribe(endpoint: str, control: Connection) -> None:
    """In a process of its own: the results' latencies (ms) from "begin" to "end" on `control`, sent back then."""
    import msgpack
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"det.")
    socket.connect(endpoint)
    latencies: list[float] = []
    recording = False
    control.send("connected")
    while True:
        if control.poll(0):
            command = control.recv()
            if command == "end":
                break
            recording = command == "begin"
        if socket.poll(50):
            message = msgpack.unpackb(socket.recv_multipart()[1], raw=False)
            if recording:
                latencies.append((message["t_publish_ns"] - message["t_capture_ns"]) / 1e6)
    control.send(latencies)
    socket.close(linger=0)
    context.term()


def run_daemon(config: Any, endpoint: str, seconds: float, what: str,
               outside: Callable[[Callable[[], None]], None] = lambda action: action()) -> Window:
    """edge.daemon.service.Service on `config` (its results on `endpoint`) for WARMUP_S, then `seconds` timed.
    `outside` runs the service's start and stop (the GPU benchmarks: on a thread without their CUDA context).
    RuntimeError naming `what` when a lane failed or nothing was processed."""
    from edge.daemon.service import Service

    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    subscriber = multiprocessing.get_context("spawn").Process(target=subscribe, args=(endpoint, theirs), daemon=True)
    subscriber.start()
    if not ours.poll(60) or ours.recv() != "connected":
        raise RuntimeError("the latency subscriber did not start within 60 s")
    service = Service(config, wait_subscriber_s=60)
    stop = threading.Event()
    outside(service.start)
    runner = threading.Thread(target=service.run, args=(stop,), name="service")
    runner.start()
    processed = lambda: sum(lane.stats.processed for lane in service.lanes)  # noqa: E731
    try:
        stop.wait(WARMUP_S)
        frames, cpu, wall = processed(), time.process_time(), time.perf_counter()
        ours.send("begin")
        stop.wait(seconds)
        frames, cpu, wall = processed() - frames, time.process_time() - cpu, time.perf_counter() - wall
        ours.send("end")
        latencies = ours.recv() if ours.poll(60) else []
    finally:
        stop.set()
        runner.join(30)
        outside(service.stop)
        subscriber.join(10)
    failed = [f"{lane.name}: {lane.error}" for lane in service.lanes if lane.error is not None]
    if failed or not frames:
        raise RuntimeError(f"{what}: {'; '.join(failed) or 'no frame processed'}")
    return Window(frames, cpu, wall, latencies)
