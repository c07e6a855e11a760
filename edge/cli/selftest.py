"""`edge selftest`: proves on the machine it runs on (above all, the Jetson) that every part edge
needs is there and works: Python, OpenCV (GStreamer for CSI), ONNX Runtime, ZeroMQ, CUDA through
pycuda, decoding a clip on each path (CPU, and NVDEC where there is one), TensorRT, and the demo model
on both ONNX Runtime and a TensorRT plan built here."""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import files
from edge.engines.base import Engine
from edge.errors import EdgeError
from edge.supervisor.telemetry import on_jetson

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def _python() -> Check:
    version = sys.version_info[:3]
    ok = (3, 10) <= version[:2] <= (3, 12)
    return Check("python", OK if ok else FAIL, ".".join(map(str, version)) + ("" if ok else " (need 3.10-3.12)"))


def _opencv() -> Check:
    from edge.opencv import import_cv2

    cv2 = import_cv2()
    gstreamer = "GStreamer:                   YES" in cv2.getBuildInformation()
    if on_jetson() and not gstreamer:
        return Check("opencv", FAIL, f"{cv2.__version__} without GStreamer: csi:// cameras cannot work."
                                     " Hint: use JetPack's python3-opencv, not a pip wheel")
    return Check("opencv", OK, f"{cv2.__version__}, GStreamer {'yes' if gstreamer else 'no'}")


def _onnxruntime() -> Check:
    import onnxruntime

    from edge.engines.onnxruntime import int8_saturates

    int8 = ("INT8 precise mode (this CPU's U8S8 kernel saturates)" if int8_saturates()
            else "INT8 U8S8 kernel exact")
    return Check("onnxruntime", OK, f"{onnxruntime.__version__}, {', '.join(onnxruntime.get_available_providers())},"
                                   f" {int8}")


def _zeromq() -> Check:
    import zmq

    from edge.wire import protocol

    context = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        pub, sub = context.socket(zmq.XPUB), context.socket(zmq.SUB)
        try:
            pub.bind(f"ipc://{tmp}/t.sock")
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"ipc://{tmp}/t.sock")
            if not pub.poll(5000):
                return Check("zeromq", FAIL, "no subscription arrived over ipc within 5 s")
            pub.recv()
            pub.send_multipart([b"t", protocol.pack({"v": 1})])
            ok = sub.poll(5000) and protocol.unpack(sub.recv_multipart()[1]) == {"v": 1}
        finally:
            pub.close(linger=0)
            sub.close(linger=0)
            context.term()
    return Check("zeromq", OK if ok else FAIL, f"libzmq {zmq.zmq_version()}, ipc round trip")


def _telemetry(root: Path = Path("/")) -> Check:
    """What the supervisor will read here. On a Jetson it must find temperatures, else it can only hold
    NORMAL: the jtop service down and no readable thermal zone is a failure there."""
    from edge.supervisor.telemetry import open_reader

    with open_reader("auto", root=root) as reader:
        sample = reader.read()
    temps = ", ".join(f"{zone} {c:.1f} °C" for zone, c in sorted(sample.temps_c.items()))
    power = f", {sample.total_mw:.0f} mW in" if sample.total_mw is not None else ""
    problems = f"; unreadable: {'; '.join(sample.problems)}" if sample.problems else ""
    if sample.temps_c:
        return Check("telemetry", OK, f"{reader.name}: {temps}{power}{problems}")
    if on_jetson():
        return Check("telemetry", FAIL, f"{reader.name}: no temperature{problems}; the supervisor cannot follow the"
                                        " heat. Hint: start the jtop service (sudo systemctl start jtop) or check"
                                        " /sys/class/thermal")
    return Check("telemetry", SKIP, f"{reader.name}: no temperature here; the supervisor holds NORMAL")


UPLOAD_BYTES = 64 << 20          # the pinned upload measured for its bandwidth
# The clip each decode path decodes unless --clip names one: JetPack's Multimedia API sample (package
# nvidia-l4t-jetson-multimedia-api), a 1080p H.264 elementary stream; why this one: docs/gpu.md, "Decode on a Jetson".
DECODE_CLIP = Path("/usr/src/jetson_multimedia_api/data/Video/sample_outdoor_car_1080p_10fps.h264")
DECODE_FRAMES = 300              # at most this many frames are decoded on each path
DECODE_PATHS = ("cpu", "nvdec")


def _cuda(required: bool) -> Check:
    import numpy as np

    from edge.gpu import cuda

    try:
        context = cuda.Context(0)
    except EdgeError as exc:
        return Check("cuda", FAIL if required else SKIP, exc.what)
    with context.current():
        host = cuda.HostBuffer((UPLOAD_BYTES,), np.uint8)
        back = cuda.HostBuffer((UPLOAD_BYTES,), np.uint8)
        device = cuda.DeviceBuffer(UPLOAD_BYTES)
        stream, start, end = cuda.Stream(), cuda.Event(timing=True), cuda.Event(timing=True)
        host.array[:] = np.arange(UPLOAD_BYTES) % 251
        device.upload(host.array, stream)                     # the first copy pays for lazy set-up
        start.record(stream)
        device.upload(host.array, stream)
        end.record(stream)
        device.download(back.array, stream)
        stream.synchronize()
        ok = bool((back.array == host.array).all())
        gb_s = UPLOAD_BYTES / (end.elapsed_ms(start) / 1e3) / 1e9
        name = context.device.name()
        memory = context.device.total_memory() / 2**30
        for item in (host, back, device, stream, start, end):
            item.free()
    context.detach()
    kind = "integrated (shares the host's memory: zero-copy by default)" if cuda.integrated() else "discrete"
    copy = "exact" if ok else "WRONG"
    return Check("cuda", OK if ok else FAIL, f"{name}, SM {cuda.compute_capability()}, {kind}, {memory:.0f} GiB;"
                                             f" pinned upload {gb_s:.1f} GB/s, pinned copy round trip {copy}")


def _decoding(path: str) -> Callable[[Any, tuple[int, int]], Any]:
    """The cameras' reader opener for `decode: PATH` (edge/pipeline/runtime.py, Decoding: nvdec is GStreamer's
    reader on a Jetson, PyNvVideoCodec's on a discrete GPU)."""
    from edge.pipeline.runtime import Decoding

    return Decoding("selftest", path, in_flight=1)


def _decode_checks(clip: Path | None, decoding: Callable[[str], Callable[[Any, tuple[int, int]], Any]] = _decoding
                   ) -> list[Check]:
    """Each decode path decodes the clip (--clip, else DECODE_CLIP where it is): frames per second, and the host
    CPU it costs a frame (the process's CPU time, every thread's: FFmpeg's, GStreamer's, the one copy into the
    surface). nvdec is NVDEC (GStreamer on a Jetson, PyNvVideoCodec on a discrete GPU): a failure there is a FAIL
    on a Jetson, a skip with the reason elsewhere."""
    if clip is None:
        if not DECODE_CLIP.is_file():
            return [Check("decode", SKIP, f"no clip to decode ({DECODE_CLIP} is not there). Hint: edge selftest --clip"
                                          " VIDEO (H.264 or H.265: .mp4, .mkv, .h264 ...); on a Jetson sudo apt-get"
                                          " install nvidia-l4t-jetson-multimedia-api brings that sample")]
        clip = DECODE_CLIP
    from edge.config.cameras import parse_uri

    try:
        uri = parse_uri(f"file://{clip.resolve()}")
    except ValueError as exc:
        return [Check("decode", FAIL, f"--clip {clip}: {exc}")]
    return [_decode(decoding(path), uri, clip, f"decode {path}", required=path == "cpu" or on_jetson())
            for path in DECODE_PATHS]


def _decode(open_reader: Callable[[Any, tuple[int, int]], Any], uri: Any, clip: Path, name: str, *,
            required: bool) -> Check:
    import numpy as np

    from edge.config.cameras import MAX_FRAME

    try:
        reader = open_reader(uri, MAX_FRAME)
    except EdgeError as exc:
        return Check(name, FAIL if required else SKIP,
                     f"{clip.name}: {exc.summary()}" + (f". Hint: {exc.hint}" if exc.hint else ""))
    frames, kind, size = 0, "", (0, 0)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        while frames < DECODE_FRAMES and (frame := reader.read()) is not None:
            frames += 1
            if isinstance(frame, np.ndarray):
                kind, size = "host BGR", (frame.shape[1], frame.shape[0])
            else:
                kind, size = f"device {frame.pixel_format}", (frame.width, frame.height)
                frame.release(None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    except EdgeError as exc:
        return Check(name, FAIL, f"{clip.name}: frame {frames + 1}: {exc.summary()}")
    finally:
        reader.close()
    if frames == 0:
        return Check(name, FAIL, f"{clip.name}: opened, but no frame decoded")
    return Check(name, OK, f"{clip.name} {size[0]}x{size[1]}: {frames} frames, {frames / wall:.0f} fps,"
                           f" {cpu * 1e3 / frames:.2f} ms CPU a frame ({kind} frames)")


def _gpu_preprocess() -> Check:
    """The preprocessing kernel on a 1080p frame against the CPU letterbox: identical output, and the time of
    each (GPU: CUDA events on the kernel alone and on the pinned upload; CPU: OpenCV), medians of 20 runs."""
    import numpy as np

    from edge.gpu import cuda
    from edge.gpu.letterbox import GpuLetterbox
    from edge.letterbox import letterbox_into

    frame = (np.arange(1080 * 1920 * 3, dtype=np.uint32).reshape(1080, 1920, 3) * 2654435761 % 251).astype(np.uint8)
    shape = (1, 3, 416, 416)
    cpu = np.empty(shape, np.float32)
    cpu_ms = statistics.median(_timed(lambda: letterbox_into(frame, cpu)) for _ in range(20))
    context = cuda.Context(0)
    try:
        with context.current():
            letterbox = GpuLetterbox(shape, np.float32)
            pinned, source = cuda.HostBuffer(frame.shape, np.uint8), cuda.DeviceBuffer(frame.nbytes)
            out, host = cuda.DeviceBuffer(cpu.nbytes), cuda.HostBuffer(shape, np.float32)
            stream, start, end = cuda.Stream(), cuda.Event(timing=True), cuda.Event(timing=True)
            pinned.array[:] = frame
            upload_ms = _gpu_ms(lambda: source.upload(pinned.array, stream), stream, start, end)
            kernel_ms = _gpu_ms(lambda: letterbox.launch(source.pointer, 1920, 1080, out.pointer, stream), stream,
                                start, end)
            letterbox.run(frame, out.pointer, stream)           # the whole path, from an ordinary array
            out.download(host.array, stream)
            stream.synchronize()
            diff = float(np.abs(host.array - cpu).max())
            for item in (letterbox, pinned, source, out, host, stream, start, end):
                item.free()
    finally:
        context.detach()
    detail = (f"1080p -> 416x416: kernel {kernel_ms:.3f} ms, CPU letterbox {cpu_ms:.3f} ms ({cpu_ms / kernel_ms:.0f}x);"
              f" pinned upload {upload_ms:.3f} ms; max abs difference {diff:g}")
    return Check("gpu preprocess", OK if diff == 0 else FAIL, detail)


def _cuda_graph() -> Check:
    """CUDA graphs (`cuda_graph: true`) work here: a graph of a 1080p frame's upload, letterbox kernel and download,
    captured once, run on a frame written into the pinned buffer afterwards, equals the CPU letterbox; and the
    host time of one launch against enqueuing the same work call by call, medians of 50."""
    import numpy as np

    from edge.errors import EngineError
    from edge.gpu import cuda
    from edge.gpu.letterbox import GpuLetterbox
    from edge.letterbox import letterbox_into

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(2)]
    shape = (1, 3, 416, 416)
    cpu = np.empty(shape, np.float32)
    letterbox_into(frames[1], cpu)
    context = cuda.Context(0)
    try:
        with context.current():
            letterbox = GpuLetterbox(shape, np.float32)
            out, host, stream = cuda.DeviceBuffer(cpu.nbytes), cuda.HostBuffer(shape, np.float32), cuda.Stream()
            staged = letterbox.stage(frames[0])

            def work() -> None:
                letterbox.enqueue(staged, out.pointer, stream)
                out.download(host.array, stream)

            graph = None
            try:
                work()
                stream.synchronize()
                graph = cuda.Graph.capture(stream, work)
                staged[:] = frames[1]                       # the graph's upload reads the buffer when it runs
                graph.launch(stream)
                stream.synchronize()
                diff = float(np.abs(host.array - cpu).max())
                eager_us = statistics.median(_timed(work) for _ in range(50)) * 1e3
                launch_us = statistics.median(_timed(lambda: graph.launch(stream)) for _ in range(50)) * 1e3
                stream.synchronize()
            except EngineError as exc:
                return Check("cuda graphs", SKIP, f"{exc.summary()}. Hint: {exc.hint}")
            finally:
                stream.synchronize()
                for item in (graph, letterbox, out, host, stream):
                    if item is not None:
                        item.free()
    finally:
        context.detach()
    detail = (f"upload + letterbox + download as one graph: max abs difference {diff:g} against the CPU; host"
              f" {launch_us:.0f} us per launch against {eager_us:.0f} us enqueued call by call")
    return Check("cuda graphs", OK if diff == 0 else FAIL, detail)


def _gpu_ms(work: Callable[[], object], stream: Any, start: Any, end: Any, runs: int = 20) -> float:
    """Median GPU time of `work` enqueued on `stream` (after one warm-up run)."""
    times = []
    for _ in range(runs + 1):
        start.record(stream)
        work()
        end.record(stream)
        stream.synchronize()
        times.append(end.elapsed_ms(start))
    return statistics.median(times[1:])


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1e3


def _tensorrt(required: bool) -> Check:
    from edge.engines.tensorrt.plan import device_key, import_tensorrt

    try:
        trt = import_tensorrt()
        key = device_key()
    except EdgeError as exc:
        return Check("tensorrt", FAIL if required else SKIP, exc.what + (f" Hint: {exc.hint}" if required else ""))
    return Check("tensorrt", OK, f"{trt.__version__}; device key {key.platform() if key else None}")


def _detects_dog(engine_factory: Callable[[], Engine], dog: Path, runs: int = 20) -> tuple[bool, str]:
    from edge.config.schema import TaskConfig
    from edge.opencv import import_cv2
    from edge.tasks import build_task

    cv2 = import_cv2()
    with engine_factory() as engine:
        task = build_task(TaskConfig(name="selftest", type="detector", model="-", cameras=["c"]), engine)
        slot = engine.create_slot("selftest", depth=1)
        image = cv2.imread(str(dog))
        times = []
        for _ in range(runs):
            buf = slot.input()
            meta = task.preprocess(image, buf)
            t0 = time.perf_counter()
            outputs = slot.submit(buf).wait(30)
            times.append((time.perf_counter() - t0) * 1e3)
        found = {task.labels[int(r[5])] for r in task.postprocess(outputs, meta)}
    ok = {"dog", "bicycle"} <= found
    return ok, f"found {sorted(found)}, median {statistics.median(times[1:]):.1f} ms a frame"


def _demo_repository(engines: Path) -> Check:
    """The demo's engine repository: manifest readable, an fp32 variant (what `edge demo` runs first), and every
    variant's file as the manifest records it (present, its sha256)."""
    from edge.engines import repository

    try:
        manifest = repository.Manifest.load(engines)
    except EdgeError as exc:
        return Check("demo engines", FAIL, f"{exc.what}. Hint: edge assets fetch --rebuild")
    broken = [(v, problem) for v in manifest.variants if (problem := repository.file_problem(manifest.root, v))]
    found = [f"{v.precision} {v.format} {v.file}: {problem}" for v, problem in broken]
    if manifest.onnx("fp32") is None:
        found.insert(0, "no fp32 ONNX variant in the manifest")
    if found:
        plans = " (a plan: `edge build` its ONNX variant again)" if any(v.format == "plan" for v, _ in broken) else ""
        return Check("demo engines", FAIL, f"{'; '.join(found)}. Hint: edge assets fetch --rebuild{plans}")
    variants = sorted(v.precision for v in manifest.variants if v.format == "onnx")
    refused = "; ".join(f"{p} refused: {r['reason']}" for p, r in sorted(manifest.refused.items()))
    return Check("demo engines", OK, f"variants {', '.join(variants)}" + (f"; {refused}" if refused else ""))


def _demo_checks(tensorrt_ok: bool, precision: str) -> list[Check]:
    from edge.engines.onnxruntime import OnnxRuntimeEngine
    from edge.engines.tensorrt import build
    from edge.engines.tensorrt.engine import TensorRTEngine
    from edge.tools import assets

    demo = assets.DemoAssets(files.default_cache_dir())
    if not demo.engines.is_dir() or not demo.image("dog.jpg").is_file():
        return [Check("demo model", SKIP, f"no demo assets in {demo.root}. Hint: edge assets fetch")]
    repository = _demo_repository(demo.engines)
    if repository.status == FAIL:
        return [repository]
    ok, detail = _detects_dog(lambda: OnnxRuntimeEngine(demo.model), demo.image("dog.jpg"))
    checks = [repository, Check("demo on onnxruntime", OK if ok else FAIL, detail)]
    if not tensorrt_ok:
        return checks + [Check("demo on tensorrt", SKIP, "TensorRT not available")]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(demo.engines, repo)
        variant = repo / demo.variant(precision).name
        try:
            result = build.build(variant, say=lambda line: None)
            ok, detail = _detects_dog(lambda: TensorRTEngine(result.plan, precision=precision), demo.image("dog.jpg"))
            detail = f"{precision} plan built in {result.seconds:.0f} s; {detail}"
        except EdgeError as exc:
            ok, detail = False, str(exc)
    return checks + [Check("demo on tensorrt", OK if ok else FAIL, detail)]


def run_selftest(*, require_tensorrt: bool, precision: str = "fp16", clip: Path | None = None,
                 say: Callable[[str], None] = print) -> list[Check]:
    """Run every check, printing one line each; the caller decides the exit code from the FAILs."""
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        say(f"{check.status:>4}  {check.name:<20} {check.detail}")
    for probe in (_python, _opencv, _onnxruntime, _zeromq, _telemetry):
        record(probe())
    gpu = _cuda(require_tensorrt)
    record(gpu)
    if gpu.status == OK:
        record(_gpu_preprocess())
        record(_cuda_graph())
    for check in _decode_checks(clip):
        record(check)
    trt = _tensorrt(require_tensorrt)
    record(trt)
    for check in _demo_checks(trt.status == OK, precision):
        record(check)
    return checks
