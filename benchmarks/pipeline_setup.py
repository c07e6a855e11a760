"""The setup of benchmarks/gpu_pipeline.py: edge's TensorRT engines on a stand-in network (benchmarks/graph_engine.py)
with their slots and feeds, the minimal loop's cameras, priming every frame record before anything is timed, and
the teardown."""
from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.pipeline_loops import DEPTH, HEIGHT, WIDTH, BatchFeed, MinimalCamera, RawLetterbox, SlotFeed
from edge.gpu import cuda
from edge.pipeline.lanes import INFER_TIMEOUT_S


@dataclasses.dataclass
class Setup:
    context: cuda.Context
    drv: Any
    stand_in: ModuleType
    network: Any
    engine: Any
    feeds: list[SlotFeed]
    graph_engine: Any
    graph_feeds: list[SlotFeed]
    batch_engine: Any
    batch_feeds: dict[int, BatchFeed]
    kernel: RawLetterbox
    cameras: list[MinimalCamera]
    frames: list[np.ndarray]


def synthetic_frames(count: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(count)]


def edge_engine(stand_in: ModuleType, network: Any, plan_dir: Path, *, cuda_graph: bool = False,
                max_batch: int | None = None, profiles: int = 1) -> Any:
    """TensorRTEngine (copy mode, GPU preprocessing) on a stand-in plan whose engine runs `network`; with
    `max_batch` a dynamic-batch plan with `profiles` profiles."""
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.tasks.detector import YoloDetector

    sys.modules["tensorrt"] = stand_in.tensorrt_module(network)
    name = "stand-in" + ("" if max_batch is None else f"-b{max_batch}") + (".graphs" if cuda_graph else "")
    plan = stand_in.write_plan(plan_dir / f"{name}.fp16.plan", network, max_batch=max_batch, profiles=profiles)
    engine = TensorRTEngine(plan, precision="fp16", copy_mode="copy", preprocessing=YoloDetector.preprocessing,
                            cuda_graph=cuda_graph).activate()
    if not (engine.rows_take_frames if max_batch else engine.takes_frames):
        in_fresh_thread(engine.deactivate)
        raise RuntimeError(f"{engine.name} does not take frames: its slots would not preprocess on the GPU")
    return engine


def prime(setup: Setup) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run every frame record, (d)'s, (b)'s, (g)'s (twice: its capture, then a launch) and the batched slots', so
    each has its CUDA graphs before anything is timed; then freeze the network. Returns edge's outputs of frame 0
    on slot 0 without and with CUDA graphs (checked against the minimal loop's)."""
    for camera in setup.cameras:
        for record in camera.records:
            camera.enqueue(record)
        camera.stream.synchronize()
    first = None
    for feed in setup.feeds:
        pendings = [feed.slot.submit_frame(feed.next("pinned"))[0] for _ in range(DEPTH)]
        results = [pending.wait(INFER_TIMEOUT_S) for pending in pendings]
        first = results[0] if first is None else first
    graph_first = None
    for feed in setup.graph_feeds:                      # each record: its work as it is and its capture, a launch
        results = [feed.slot.submit_frame(feed.next("pinned"))[0].wait(INFER_TIMEOUT_S) for _ in range(2 * DEPTH)]
        graph_first = results[DEPTH] if graph_first is None else graph_first     # frame 0 again, by its graph
        if feed.slot.graph_problem is not None:
            raise RuntimeError(f"edge's CUDA graph capture failed: {feed.slot.graph_problem}")
        if any(record.graph.captured is None for record in feed.slot.frames):
            raise RuntimeError("a frame record of edge's graph-mode slot has no CUDA graph after priming")
    for feed in setup.batch_feeds.values():
        for _ in range(DEPTH):
            feed.slot.submit_frames(feed.next())[0].wait(INFER_TIMEOUT_S)
    setup.network.freeze()
    return first, graph_first


def build(stand_in: ModuleType, network: Any, context: cuda.Context, frames: list[np.ndarray], counts: Sequence[int],
          plan_dir: Path) -> Setup:
    """Edge's engines on `network` (a stand_in.GraphNetwork): a slot per camera without and with CUDA graphs, a
    batched slot per camera count; the minimal loop's cameras (the context current)."""
    import pycuda.driver as drv

    engine = edge_engine(stand_in, network, plan_dir)
    graph_engine = edge_engine(stand_in, network, plan_dir, cuda_graph=True)
    batch_engine = edge_engine(stand_in, network, plan_dir, max_batch=max(counts), profiles=len(counts))
    with engine.context.current():
        feeds = [SlotFeed(engine.create_slot(f"cam{index}", depth=DEPTH), frames) for index in range(max(counts))]
        graph_feeds = [SlotFeed(graph_engine.create_slot(f"cam{index}", depth=DEPTH), frames)
                       for index in range(max(counts))]
        batch_feeds = {n: BatchFeed(batch_engine.create_slot(f"batch{n}", depth=DEPTH, batch=n), frames)
                       for n in counts}
    kernel = RawLetterbox(drv, stand_in.NET)
    minimal = [MinimalCamera(drv, kernel, network, stand_in, frames) for _ in range(max(counts))]
    return Setup(context, drv, stand_in, network, engine, feeds, graph_engine, graph_feeds, batch_engine, batch_feeds,
                 kernel, minimal, frames)


def in_fresh_thread(action: Callable[[], None]) -> None:
    """Run `action` on a thread where no CUDA context is current: edge's Context.detach() (in engine.deactivate())
    refuses to run where one is, and the main thread keeps the benchmark's own pushed for the whole run."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]



def teardown(setup: Setup) -> None:
    for camera in setup.cameras:
        camera.free()
    setup.kernel.free()
    for engine in (setup.engine, setup.graph_engine, setup.batch_engine):
        in_fresh_thread(engine.deactivate)


