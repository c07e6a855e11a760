"""The loops and stage timings of benchmarks/gpu_pipeline.py: frames through edge's slots ((b), (g), batched), the
serial loop (a) and the minimal loop (d) (raw pycuda calls, edge's kernel source, the same stand-in network), each
timed over its frames with its thread CPU time; and the stage times, the CPU letterbox and the ideal bound."""
from __future__ import annotations

import collections
import dataclasses
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from edge.gpu import cuda, nvrtc
from edge.gpu.kernels import BLOCK, CUBIN_NAME, FUNCTIONS, KERNEL_SOURCE, SIGNATURES
from edge.letterbox import INV255, Letterbox, letterbox_into
from edge.pipeline.lanes import INFER_TIMEOUT_S

WIDTH, HEIGHT = 1920, 1080
DEPTH = 2                       # frames in flight per camera, (b) and (d)
FILL = 0.5                      # the letterbox padding, as GpuLetterbox
SOURCES = ("pinned", "pageable")
KINDS = {"a": "(a) serial", "b": "(b) edge", "g": "(g) edge, CUDA graphs", "d": "(d) minimal"}
STAGES = ("h2d", "letterbox", "engine", "d2h")
WARM_ITERATIONS = 30
Loop = Callable[[threading.Barrier], float]     # warm-up, barrier, timed frames -> their thread CPU seconds
NO_LATENCY = float("nan")


@dataclasses.dataclass(frozen=True)
class Run:
    fps: float
    host_ms: float              # thread CPU time per frame
    cores: float                # the loops' thread CPU seconds per wall second (1.0: one core busy)
    p50_ms: float = NO_LATENCY  # a frame's submission to its result (edge's loops)
    p99_ms: float = NO_LATENCY


class CallClock:
    """Thread CPU seconds in named calls of one loop, from frame `start` on (the timed frames); `counting=False`
    only makes the calls (the plain runs). Both kinds of run go through it, so (b) and (d) pay alike."""

    def __init__(self, start: int = 0, *, counting: bool = False) -> None:
        self.start = start
        self.counting = counting
        self.seconds: collections.Counter[str] = collections.Counter()

    def call(self, name: str, frame: int, action: Callable[[], Any]) -> Any:
        if not self.counting:
            return action()
        began = time.thread_time()
        result = action()
        if frame >= self.start:
            self.seconds[name] += time.thread_time() - began
        return result


# --- timing --------------------------------------------------------------------------------------------

def measure(loops: Sequence[Loop], frames: int, latencies: list[float] | None = None) -> Run:
    """One thread per loop; the clock runs from the moment all finished their warm-up until the last ends.
    `frames`: the timed frames of each loop; `latencies`: the list the loops append each timed frame's to."""
    barrier = threading.Barrier(len(loops) + 1)
    cpu = [0.0] * len(loops)
    errors: list[BaseException] = []

    def body(index: int, loop: Loop) -> None:
        try:
            cpu[index] = loop(barrier)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the measuring thread below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i, loop), name=f"bench-{i}") for i, loop in enumerate(loops)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    run = Run(len(loops) * frames / wall, statistics.mean(cpu) / frames * 1e3, sum(cpu) / wall)
    if latencies:
        ms = np.array(latencies) * 1e3
        run = dataclasses.replace(run, p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)))
    return run


def timed_loop(step: Callable[[int], None], frames: int, warmup: int, barrier: threading.Barrier) -> float:
    """step(i) for the warm-up frames, then, after the barrier, for the timed ones; their thread CPU seconds."""
    for i in range(warmup):
        step(i)
    barrier.wait()
    start = time.thread_time()
    for i in range(warmup, warmup + frames):
        step(i)
    return time.thread_time() - start


def host_median_ms(action: Callable[[int], Any], iterations: int) -> float:
    times = []
    for i in range(-WARM_ITERATIONS, iterations):
        start = time.perf_counter()
        action(i)
        if i >= 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# --- (b): edge's slots ---------------------------------------------------------------------------------

class SlotFeed:
    """Frames for one edge slot. `pinned`: the staging buffer of the frame record the submission takes
    (slot.frames[k].letterbox.frame_buffer, filled once), so submit_frame copies nothing on the host;
    `pageable`: numpy frames, which submit_frame copies into that buffer. Made with the context current."""

    def __init__(self, slot: Any, frames: Sequence[np.ndarray]) -> None:
        self.slot = slot
        self.frames = frames
        self.submitted = 0          # the slot takes its frame records in turn: record = submitted % depth
        self.buffers = []
        for index, record in enumerate(slot.frames):
            buffer = record.letterbox.frame_buffer(WIDTH, HEIGHT)
            buffer[:] = frames[index % len(frames)]
            self.buffers.append(buffer)

    def next(self, source: str) -> np.ndarray:
        index, self.submitted = self.submitted, self.submitted + 1
        return self.buffers[index % len(self.buffers)] if source == "pinned" else self.frames[index % len(self.frames)]


def edge_lane(feed: SlotFeed, source: str, frames: int, warmup: int, clock: CallClock,
              latencies: list[float] | None = None) -> Loop:
    """A lane's calls on its slot: wait for the oldest result when K are in flight, then submit the next frame.
    With `latencies`, each timed frame's submission-to-result seconds go there."""
    slot = feed.slot
    in_flight: collections.deque[tuple[int, float, Any]] = collections.deque()

    def wait(frame: int) -> None:
        submitted, began, pending = in_flight.popleft()
        clock.call("wait", frame, lambda: pending.wait(INFER_TIMEOUT_S, copy=False))
        if latencies is not None and submitted >= warmup:
            latencies.append(time.perf_counter() - began)

    def step(i: int) -> None:
        if len(in_flight) == slot.depth:
            wait(i)
        began = time.perf_counter()
        in_flight.append((i, began, clock.call("submit_frame", i, lambda: slot.submit_frame(feed.next(source))[0])))

    def loop(barrier: threading.Barrier) -> float:
        seconds = timed_loop(step, frames, warmup, barrier)
        start = time.thread_time()
        while in_flight:
            wait(warmup + frames)
        return seconds + time.thread_time() - start

    return loop


class BatchFeed:
    """Pinned frames for a batched slot of N rows: each frame record's row letterboxes' staging buffers, filled
    once, so submit_frames copies nothing on the host (as SlotFeed's `pinned`)."""

    def __init__(self, slot: Any, frames: Sequence[np.ndarray]) -> None:
        self.slot = slot
        self.submitted = 0
        self.batches = []
        for index, record in enumerate(slot.frames):
            rows = []
            for row, letterbox in enumerate(record.letterboxes[:slot.batch]):
                buffer = letterbox.frame_buffer(WIDTH, HEIGHT)
                buffer[:] = frames[(index + row) % len(frames)]
                rows.append(buffer)
            self.batches.append(rows)

    def next(self) -> list[np.ndarray]:
        index, self.submitted = self.submitted, self.submitted + 1
        return self.batches[index % len(self.batches)]


def batch_lane(feed: BatchFeed, frames: int, warmup: int, latencies: list[float]) -> Loop:
    """One thread, one batched slot: wait for the oldest batch when K are in flight, then submit the next N
    frames; each timed frame's latency is its batch's submission-to-result time."""
    slot = feed.slot
    in_flight: collections.deque[tuple[int, float, Any]] = collections.deque()

    def wait() -> None:
        submitted, began, pending = in_flight.popleft()
        pending.wait(INFER_TIMEOUT_S, copy=False)
        if submitted >= warmup:
            latencies.extend([time.perf_counter() - began] * slot.batch)

    def step(i: int) -> None:
        if len(in_flight) == slot.depth:
            wait()
        in_flight.append((i, time.perf_counter(), slot.submit_frames(feed.next())[0]))

    def loop(barrier: threading.Barrier) -> float:
        seconds = timed_loop(step, frames, warmup, barrier)
        start = time.thread_time()
        while in_flight:
            wait()
        return seconds + time.thread_time() - start

    return loop


# --- (a) and (d): no edge code per frame ---------------------------------------------------------------

class RawLetterbox:
    """edge's letterbox kernel (fp32 output) launched straight through pycuda with the arguments
    GpuLetterbox.launch passes for a 1080p frame. Made with the context current."""

    def __init__(self, drv: Any, net: tuple[int, ...]) -> None:
        major, minor = drv.Context.get_device().compute_capability()
        name = FUNCTIONS["bgr", np.dtype(np.float32)]
        self._module = drv.module_from_buffer(nvrtc.cubin(KERNEL_SOURCE, CUBIN_NAME, arch=f"sm_{major}{minor}"))
        self._function = self._module.get_function(name)
        self._function.prepare(SIGNATURES["bgr"])
        height, width = net[2:]
        box = Letterbox.fit(WIDTH, HEIGHT, width, height)
        self._grid = (math.ceil(width / BLOCK[0]), math.ceil(height / BLOCK[1]))
        self._args = (*box.resize_steps(), WIDTH, HEIGHT, WIDTH * 3, width, height, box.left, box.top,
                      box.width, box.height, INV255, np.float32(FILL))

    def launch(self, source: int, out: int, stream: Any) -> None:
        self._function.prepared_async_call(self._grid, BLOCK, stream, source, out, *self._args)

    def free(self) -> None:
        """Unload the module now, while the context is current."""
        self._function = self._module = None


@dataclasses.dataclass
class Record:
    """One frame in flight of the minimal loop."""

    frame: np.ndarray                   # pinned HxWx3 uint8
    device_frame: Any
    input: Any                          # fp32 network input
    outputs: dict[str, Any]
    host_outputs: dict[str, np.ndarray]  # pinned
    done: Any                           # blocking-sync event
    addresses: dict[str, int]

    def free(self) -> None:
        """Free the memory and the event now, while the context is current."""
        for allocation in (self.device_frame, self.input, *self.outputs.values()):
            allocation.free()
        for array in (self.frame, *self.host_outputs.values()):
            array.base.free()
        self.done = None


class MinimalCamera:
    """One camera of the minimal loop: one stream, DEPTH records. Made and freed with the context current."""

    def __init__(self, drv: Any, kernel: RawLetterbox, network: Any, stand_in: ModuleType,
                 frames: Sequence[np.ndarray]) -> None:
        self.drv = drv
        self.kernel = kernel
        self.network = network
        self.stream = drv.Stream(flags=1)           # non-blocking, as edge's
        self.handle = int(self.stream.handle)
        self.records = [self._record(stand_in, frames[k % len(frames)]) for k in range(DEPTH)]

    def _record(self, stand_in: ModuleType, frame: np.ndarray) -> Record:
        drv = self.drv
        pinned = drv.pagelocked_empty(frame.shape, np.uint8)
        pinned[:] = frame
        inputs = drv.mem_alloc(int(np.prod(stand_in.NET)) * 4)
        outputs = {name: drv.mem_alloc(int(np.prod(shape)) * 4) for name, shape in stand_in.HEADS.items()}
        host = {name: drv.pagelocked_empty(shape, np.float32) for name, shape in stand_in.HEADS.items()}
        done = drv.Event(int(drv.event_flags.BLOCKING_SYNC) | int(drv.event_flags.DISABLE_TIMING))
        addresses = {stand_in.INPUT: int(inputs), **{name: int(a) for name, a in outputs.items()}}
        return Record(pinned, drv.mem_alloc(frame.nbytes), inputs, outputs, host, done, addresses)

    def upload(self, record: Record) -> None:
        self.drv.memcpy_htod_async(record.device_frame, record.frame, self.stream)

    def letterbox(self, record: Record) -> None:
        self.kernel.launch(int(record.device_frame), int(record.input), self.stream)

    def infer(self, record: Record) -> None:
        self.network.enqueue(record.addresses, self.handle)

    def download(self, record: Record) -> None:
        for name, allocation in record.outputs.items():
            self.drv.memcpy_dtoh_async(record.host_outputs[name], allocation, self.stream)

    def enqueue(self, record: Record) -> None:
        self.upload(record)
        self.letterbox(record)
        self.infer(record)
        self.download(record)
        record.done.record(self.stream)

    def free(self) -> None:
        """Wait for the stream, then free the records and the stream now, while the context is current."""
        self.stream.synchronize()
        while self.records:
            self.records.pop().free()
        self.stream = None


def serial_loop(context: cuda.Context, cameras: Sequence[MinimalCamera], source: str,
                frames: Sequence[np.ndarray], total: int, warmup: int) -> Loop:
    """(a): one frame at a time, stream.synchronize() after each, cameras in turn."""

    def step(i: int) -> None:
        camera = cameras[i % len(cameras)]
        record = camera.records[0]
        if source == "pageable":
            np.copyto(record.frame, frames[i % len(frames)])
        camera.enqueue(record)
        camera.stream.synchronize()

    def loop(barrier: threading.Barrier) -> float:
        with context.current():
            return timed_loop(step, total, warmup, barrier)

    return loop


def minimal_lane(context: cuda.Context, camera: MinimalCamera, source: str, frames: Sequence[np.ndarray],
                 count: int, warmup: int, clock: CallClock) -> Loop:
    """(d): K frames in flight on one stream; a record is reused once its event (K frames back) completed."""

    def step(i: int) -> None:
        record = camera.records[i % DEPTH]
        clock.call("synchronize", i, record.done.synchronize)      # at once for an event never recorded
        if source == "pageable":
            np.copyto(record.frame, frames[i % len(frames)])
        clock.call("enqueue", i, lambda: camera.enqueue(record))

    def loop(barrier: threading.Barrier) -> float:
        with context.current():
            seconds = timed_loop(step, count, warmup, barrier)
            start = time.thread_time()
            for record in camera.records:
                clock.call("synchronize", warmup + count, record.done.synchronize)
            return seconds + time.thread_time() - start

    return loop


# --- stages and preprocessing ----------------------------------------------------------------------------

def stage_times(drv: Any, camera: MinimalCamera, iterations: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median GPU ms of each stage of one frame (CUDA events between the stages, one camera alone), and median
    host ms of enqueuing each (perf_counter around the call)."""
    record = camera.records[0]
    steps = (camera.upload, camera.letterbox, camera.infer, camera.download)
    marks = [drv.Event() for _ in range(len(steps) + 1)]
    gpu: dict[str, list[float]] = {stage: [] for stage in STAGES}
    host: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(WARM_ITERATIONS + iterations):
        marks[0].record(camera.stream)
        for stage, step, mark in zip(STAGES, steps, marks[1:]):
            start = time.perf_counter()
            step(record)
            host[stage].append((time.perf_counter() - start) * 1e3)
            mark.record(camera.stream)
        marks[-1].synchronize()
        for stage, start_mark, end_mark in zip(STAGES, marks, marks[1:]):
            gpu[stage].append(end_mark.time_since(start_mark))
    medians = [{stage: round(statistics.median(values[WARM_ITERATIONS:]), 4) for stage, values in samples.items()}
               for samples in (gpu, host)]
    return medians[0], medians[1]


def cpu_letterbox_ms(frames: Sequence[np.ndarray], net: tuple[int, ...], iterations: int,
                     threads: int | None) -> float:
    """Median ms of OpenCV's letterbox (edge.letterbox.letterbox_into) of the frames, with `threads` OpenCV
    threads (None: its default pool)."""
    out = np.empty(net, np.float32)
    default = cv2.getNumThreads()
    cv2.setNumThreads(default if threads is None else threads)
    try:
        return host_median_ms(lambda i: letterbox_into(frames[i % len(frames)], out), iterations)
    finally:
        cv2.setNumThreads(default)


def kernel_max_difference(drv: Any, camera: MinimalCamera, net: tuple[int, ...]) -> float:
    """Max |GPU - CPU| of the letterbox of record 0's frame (the stage run left the kernel's output in place)."""
    record = camera.records[0]
    got = np.empty(net, np.float32)
    drv.memcpy_dtoh(got, record.input)
    want = np.empty(net, np.float32)
    letterbox_into(record.frame.copy(), want)
    return float(np.abs(got - want).max())


def preprocessing(drv: Any, camera: MinimalCamera, frames: Sequence[np.ndarray], stages: dict[str, float],
                  net: tuple[int, ...], iterations: int) -> dict[str, float]:
    cpu_pool = cpu_letterbox_ms(frames, net, iterations, None)
    cpu_one = cpu_letterbox_ms(frames, net, iterations, 1)
    kernel, upload = stages["letterbox"], stages["h2d"]
    return {"cpu_opencv_threads": cv2.getNumThreads(), "cpu_ms": round(cpu_pool, 4),
            "cpu_1_thread_ms": round(cpu_one, 4),
            "gpu_kernel_ms": kernel, "gpu_upload_and_kernel_ms": round(upload + kernel, 4),
            "speedup_kernel": round(cpu_pool / kernel, 1), "speedup_kernel_1_thread": round(cpu_one / kernel, 1),
            "speedup_upload_and_kernel": round(cpu_pool / (upload + kernel), 1),
            "max_abs_difference": kernel_max_difference(drv, camera, net)}


def ideal_bound(stages: dict[str, float]) -> dict[str, Any]:
    """(c): the busiest stream resource's rate. The SMs run the letterbox and the engine."""
    resources = {"H2D copy engine": stages["h2d"], "SMs (letterbox + engine)": stages["letterbox"] + stages["engine"],
                 "D2H copy engine": stages["d2h"]}
    busiest = max(resources, key=lambda name: resources[name])
    return {"resources_ms": {k: round(v, 4) for k, v in resources.items()}, "busiest": busiest,
            "fps": round(1e3 / resources[busiest], 1)}


