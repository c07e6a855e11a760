"""Host time per frame of the TensorRT slot path on the device machine (issue 9, item 1): what a lane's
thread spends in slot.input() / submit() (upload, enqueue, download, events) and pending.wait(), at 1, 2
and 4 cameras (one thread and one slot each, as lanes run) with K=2 frames in flight.

The engine is tests/support/fake_tensorrt.py ("stand-in TensorRT"): the demo model's IO (1x3x416x416 fp32 in, YOLO
heads 1x255x13x13 and 1x255x26x26 out), its compute a device-to-device copy of the input's start into each
output, so the figures are edge's own host cost, not an engine's. Rows:
  old slot              the slot before the rework (one stream, lists by ring position, results copied),
                        kept only in this script, run on the same engine
  copy                  TrtSlot in copy mode, results copied by wait() (what a caller gets by default)
  copy, lane wait       copy mode, wait(copy=False) as the lane does (it decodes before the slot reuses them)
  zerocopy, lane wait   mapped host memory handed to the engine (no copies; over PCIe on a discrete card)
  + CPU letterbox       the lane's CPU path: letterbox_into of a 1080p frame into slot.input(), then copy mode
  + GPU letterbox       the lane's TensorRT path: submit_frame() of the same pageable 1080p frame (staged into
                        the frame's pinned buffer, uploaded and letterboxed on the upload stream)
Host time is the lane thread's CPU time (time.thread_time) over the frames, divided by them; fps is all
frames over the wall time. Then one camera with a slow engine (the stand-in spinning 1 ms per frame): fps of
the old slot (its next upload waits for the compute) against the new one (uploads overlap it).

Usage: python benchmarks/gpu_slot.py [--frames 300] [--cameras 1,2,4] [--out FILE]
Prints a table; writes JSON to --out, else to $OUT/gpu_slot.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.engines.base import Pending, Slot
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.errors import EngineError
from edge.gpu import cuda
from edge.letterbox import letterbox_into
from edge.tasks.detector import YoloDetector
from tests.support import fake_tensorrt

DEPTH = 2
WARMUP = 30
FRAME = (1080, 1920, 3)
NET = [1, 3, 416, 416]
HEADS = {"yolo0_13x13": [1, 255, 13, 13], "yolo1_26x26": [1, 255, 26, 26]}


class OldPending(Pending):
    def __init__(self, slot: OldSlot, index: int, release: Callable[[], None]) -> None:
        super().__init__(release)
        self._slot = slot
        self._index = index

    def _wait_impl(self, timeout: float | None) -> dict[str, np.ndarray]:
        with self._slot.engine.context.current():
            if not self._slot.events[self._index].wait(timeout):
                raise EngineError(f"{self._slot.engine.name}: inference did not finish within {timeout} s")
        return {name: host.array.copy() for name, host in self._slot.outputs[self._index].items()}


class OldSlot(Slot):
    """The TrtSlot of commit 13e11d8 (before issue 9's item 1), on today's base class: one stream for
    upload, engine and download; per ring position a pinned input, device buffers and an event."""

    def __init__(self, engine: TensorRTEngine, name: str, depth: int) -> None:
        super().__init__(engine, name, depth)
        spec = engine.inputs[0]
        with engine.context.current():
            self.stream = cuda.Stream()
            self.execution = engine.engine.create_execution_context()
            self.execution.set_input_shape(spec.name, spec.shape)
            self.hosts = [cuda.HostBuffer(spec.shape, spec.dtype) for _ in range(depth)]
            self.device_inputs = [cuda.DeviceBuffer(int(np.prod(spec.shape)) * spec.dtype.itemsize)
                                  for _ in range(depth)]
            self.outputs = [{o.name: cuda.HostBuffer(o.shape, o.dtype) for o in engine.outputs} for _ in range(depth)]
            self.device_outputs = [{o.name: cuda.DeviceBuffer(int(np.prod(o.shape)) * o.dtype.itemsize)
                                    for o in engine.outputs} for _ in range(depth)]
            self.events = [cuda.Event() for _ in range(depth)]

    def _input(self, index: int) -> np.ndarray:
        return self.hosts[index].array

    def _submit_impl(self, index: int, release: Callable[[], None]) -> Pending:
        spec = self.engine.inputs[0]
        with self.engine.context.current():
            self.device_inputs[index].upload(self.hosts[index].array, self.stream)
            self.execution.set_tensor_address(spec.name, self.device_inputs[index].pointer)
            for name, buffer in self.device_outputs[index].items():
                self.execution.set_tensor_address(name, buffer.pointer)
            if not self.execution.execute_async_v3(self.stream.handle):
                raise EngineError(f"{self.engine.name}: execute_async_v3 failed on slot {self.name}")
            for name, buffer in self.device_outputs[index].items():
                buffer.download(self.outputs[index][name].array, self.stream)
            self.events[index].record(self.stream)
        return OldPending(self, index, release)

    def _close_impl(self) -> None:
        with self.engine.context.current():
            self.stream.synchronize()
            for buffer in self.device_inputs + [b for d in self.device_outputs for b in d.values()]:
                buffer.free()
            for host in self.hosts + [h for d in self.outputs for h in d.values()]:
                host.free()
            for event in self.events:
                event.free()
            self.stream.free()
            self.execution = None


def demo_shaped_plan(root: Path) -> Path:
    """A stand-in plan with the demo model's IO (the stand-in only reads the graph's inputs and outputs)."""
    import onnx
    from onnx import TensorProto, helper

    from edge.engines.tensorrt import build

    nodes = [helper.make_node("Identity", ["images"], [name]) for name in HEADS]
    graph = helper.make_graph(nodes, "demo-io", [helper.make_tensor_value_info("images", TensorProto.FLOAT, NET)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in HEADS.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(root / "demo-io.onnx"))
    return build.build(root / "demo-io.onnx", say=lambda line: None).plan


def lane(slot: Slot, frames: int, step: Callable[[Slot, np.ndarray], Pending], copy: bool,
         frame: np.ndarray, result: dict[str, float]) -> None:
    """One lane's loop with K in flight: wait for the oldest when K are in flight, then submit the next."""
    in_flight: collections.deque[Pending] = collections.deque()
    for i in range(WARMUP + frames):
        if i == WARMUP:
            start_cpu = time.thread_time()
        if len(in_flight) == slot.depth:
            in_flight.popleft().wait(30, copy=copy)
        in_flight.append(step(slot, frame))
    while in_flight:
        in_flight.popleft().wait(30, copy=copy)
    result["cpu_ms"] = (time.thread_time() - start_cpu) / frames * 1e3


def tensor_step(slot: Slot, frame: np.ndarray) -> Pending:
    return slot.submit(slot.input())


def cpu_letterbox_step(slot: Slot, frame: np.ndarray) -> Pending:
    buf = slot.input()
    letterbox_into(frame, buf)
    return slot.submit(buf)


def gpu_letterbox_step(slot: Slot, frame: np.ndarray) -> Pending:
    return slot.submit_frame(frame)[0]


def run(make_slot: Callable[[str], Slot], cameras: int, frames: int, step: Callable[[Slot, np.ndarray], Pending],
        copy: bool) -> dict[str, float]:
    slots = [make_slot(f"cam{i}") for i in range(cameras)]
    image = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)
    results: list[dict[str, float]] = [{} for _ in slots]
    threads = [threading.Thread(target=lane, args=(slot, frames, step, copy, image, result))
               for slot, result in zip(slots, results)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for slot in slots:
        slot.close()
    return {"host_ms_per_frame": round(float(np.mean([r["cpu_ms"] for r in results])), 4),
            "fps": round(cameras * (frames + WARMUP) / wall, 1)}


def rows(engines: dict[str, TensorRTEngine]) -> dict[str, tuple[Callable[[str], Slot], Any, bool]]:
    copy, zero = engines["copy"], engines["zerocopy"]
    return {
        "old slot": (lambda name: OldSlot(copy, name, DEPTH), tensor_step, True),
        "copy": (lambda name: copy.create_slot(name, depth=DEPTH), tensor_step, True),
        "copy, lane wait": (lambda name: copy.create_slot(name, depth=DEPTH), tensor_step, False),
        "zerocopy, lane wait": (lambda name: zero.create_slot(name, depth=DEPTH), tensor_step, False),
        "copy + CPU letterbox 1080p": (lambda name: copy.create_slot(name, depth=DEPTH), cpu_letterbox_step, False),
        "copy + GPU letterbox 1080p": (lambda name: copy.create_slot(name, depth=DEPTH), gpu_letterbox_step, False),
    }


def card() -> dict[str, Any]:
    device = cuda.driver().Device(0)
    return {"gpu": device.name(), "sm": cuda.compute_capability(), "integrated": cuda.integrated(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--cameras", default="1,2,4")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cameras = [int(c) for c in args.cameras.split(",")]
    sys.modules["tensorrt"] = fake_tensorrt
    import edge.engines.repository

    edge.engines.repository.read_board = lambda root=Path("/"): fake_tensorrt.BOARD
    with tempfile.TemporaryDirectory() as tmp:
        plan = demo_shaped_plan(Path(tmp))
        engines = {mode: TensorRTEngine(plan, copy_mode=mode, preprocessing=YoloDetector.preprocessing).activate()
                   for mode in ("copy", "zerocopy")}
        try:
            table = {name: {str(n): run(make, n, args.frames, step, copy) for n in cameras}
                     for name, (make, step, copy) in rows(engines).items()}
            fake_tensorrt.COMPUTE_NS = 1_000_000
            slow = {name: run(make, 1, args.frames, tensor_step, True)["fps"]
                    for name, (make, _, _) in list(rows(engines).items())[:2]}
            fake_tensorrt.COMPUTE_NS = 0
        finally:
            for engine in engines.values():
                engine.deactivate()
    report = {"benchmark": "gpu_slot", "device": card(), "depth": DEPTH, "frames_per_lane": args.frames,
              "engine": "tests/support/fake_tensorrt.py stand-in (an async copy of the input into each output)",
              "host_time": table, "fps_1_camera_1ms_engine": slow}
    print(f"{report['device']['gpu']} (SM {report['device']['sm']}), K={DEPTH}, {args.frames} frames per lane")
    print(f"{'slot path':30}" + "".join(f"{f'{n} cam ms/frame':>17}{'fps':>8}" for n in cameras))
    for name, by_cameras in table.items():
        print(f"{name:30}" + "".join(f"{r['host_ms_per_frame']:>17.3f}{r['fps']:>8.0f}" for r in by_cameras.values()))
    print("1 camera, stand-in engine spinning 1 ms per frame: "
          + ", ".join(f"{name} {fps:.0f} fps" for name, fps in slow.items()))
    out = args.out or (Path(os.environ["OUT"]) / "gpu_slot.json" if os.environ.get("OUT") else None)
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
