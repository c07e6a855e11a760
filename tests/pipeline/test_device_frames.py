"""Device frames through the pipeline, on the CUDA stand-in's trt_ledger (tests/support/fake_cuda.py) and a decoder's
SurfacePool (tests/support/device_frames.py): Frame and LatestFrame hold and release them (a frame replaced before
anyone took it goes back), a camera releases what it refuses, a lane hands them to a TensorRT slot that reads them
in place (tests/support/fake_tensorrt.py) or copies them to the host for ONNX Runtime (logged once), a rate-gated
skip and a failing slot release them, and after a stop mid-flight every surface is back and nothing is held."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config.cameras import parse_uri
from edge.config.schema import TaskConfig
from edge.engines.base import LetterboxPreprocessing
from edge.engines.factory import Variants
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.engines.tensorrt import build
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.errors import EngineError, SourceError, UsageError
from edge.gpu import surfaces
from edge.gpu.surfaces import SurfacePool
from edge.pipeline import cameras
from edge.pipeline.batched import BatchedLane
from edge.pipeline.cameras import Camera, EndOfStream, Frame, LatestFrame
from edge.pipeline.lanes import Lane
from edge.pipeline.runtime import TaskRuntime
from tests.conftest import wait_for
from tests.support import fake_cuda, fake_tensorrt
from tests.support.device_frames import NV12, Decoder
from tests.support.lanes import YOLO, lossless_camera, published
from tests.support.models import conv_model, set_batch

SIZE = (NV12["width"], NV12["height"])


@pytest.fixture
def decoder(trt_ledger: fake_cuda.Ledger) -> Decoder:
    return Decoder(count=4)


def _device(decoder: Decoder, index: int, camera: str = "c") -> Frame:
    return Frame(camera, index, 10**9 + index, None, decoder.frame(timeout=5))


def _done(decoder: Decoder, trt_ledger: fake_cuda.Ledger) -> None:
    """Every surface is back in the pool, and once it is freed nothing is held."""
    assert decoder.back(decoder.pool.count), "a surface was not given back"
    decoder.free()
    assert trt_ledger.live == {}


# --- Frame and LatestFrame ---------------------------------------------------------------------------------------

def test_a_frame_is_a_host_image_or_a_device_frame(decoder: Decoder, trt_ledger: fake_cuda.Ledger) -> None:
    host = Frame("c", 0, 0, np.zeros((4, 6, 3), np.uint8))
    assert host.size == (6, 4) and host.device is None
    host.release()                                          # nothing to release
    frame = _device(decoder, 1)
    assert frame.size == SIZE and frame.image is None
    frame.release()
    assert frame.size == SIZE                               # kept: still readable after the release
    with pytest.raises(UsageError, match="a host image or a device frame, one of them"):
        Frame("c", 2, 0, None)
    with pytest.raises(UsageError, match="one of them"):
        Frame("c", 3, 0, np.zeros((4, 6, 3), np.uint8), frame.device)
    _done(decoder, trt_ledger)


def test_a_frame_replaced_before_anyone_took_it_goes_back(decoder: Decoder, trt_ledger: fake_cuda.Ledger) -> None:
    latest, stop = LatestFrame(lossless=False), threading.Event()
    reader = latest.register()
    first = _device(decoder, 0)
    assert latest.put(first, stop=stop)
    assert latest.put(_device(decoder, 1), stop=stop)
    assert first.device.released                            # nobody took it: back to the pool
    taken = latest.get_after(reader, -1, 0)
    assert taken.index == 1
    assert latest.put(_device(decoder, 2), stop=stop)
    assert not taken.device.released                        # the reader holds its own reference
    taken.release()
    assert taken.device.released
    latest.put(_device(decoder, 3), stop=stop)
    latest.close()
    last = latest.get_after(reader, 1, 0)                   # closed: the reader may still take the last frame
    assert last.index == 3 and not last.device.released
    last.release()
    assert last.device.released                             # every reader took it: the LatestFrame let it go
    with pytest.raises(EndOfStream):
        latest.get_after(reader, 3, 0)
    _done(decoder, trt_ledger)


def test_a_closed_latest_frame_releases_its_last_frame_once_every_reader_took_it(
        decoder: Decoder, trt_ledger: fake_cuda.Ledger) -> None:
    latest, stop = LatestFrame(lossless=True), threading.Event()
    one, two = latest.register(), latest.register()
    last = _device(decoder, 0)
    assert latest.put(last, stop=stop)
    latest.close()
    latest.get_after(one, -1, 0).release()
    assert not last.device.released, "released while a reader had still to take it"
    latest.unregister(two)                                  # the other reader leaves without it
    assert last.device.released
    with pytest.raises(EndOfStream):
        latest.get_after(one, -1, 0)
    refused = _device(decoder, 1)
    assert not latest.put(refused, stop=stop)               # closed: refused, and released
    assert refused.device.released
    unread = LatestFrame(lossless=False)
    assert unread.put(_device(decoder, 2), stop=stop)
    unread.close()                                          # no reader at all
    _done(decoder, trt_ledger)


def test_a_camera_releases_a_device_frame_it_refuses(decoder: Decoder, trt_ledger: fake_cuda.Ledger,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder's frame over the camera's max_frame: the file is not read further, and the frame goes back."""
    class Reader:
        fps, frames, declared_frames, pts_ms = 30.0, 0, 0, None

        def read(self) -> Any:
            return decoder.frame(timeout=5)

        def close(self) -> None:
            pass

    monkeypatch.setattr(cameras, "open_reader", lambda uri, max_frame: Reader())
    camera = Camera("c", lossless_camera().uri, on_event=lambda name, details: None, max_frame=(8, 8))
    camera.start()
    wait_for(lambda: not camera._thread.is_alive(), what="the camera to stop at the refused frame")
    assert camera.stats.captured == 0
    _done(decoder, trt_ledger)


def _bgrx(pool: SurfacePool) -> Any:
    surface = pool.acquire(5)
    return surface.frame(pixel_format="bgrx", width=4, height=4, pitch=16, plane_offsets=(0,), matrix="bt601",
                         full_range=False, ready=None)


def test_a_lost_live_camera_gives_back_the_frame_no_lane_took(trt_ledger: fake_cuda.Ledger, caplog: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The lost camera's last frame stayed in its LatestFrame: an outage longer than RETIRE_S freed the pool with a
    warning that blamed the lanes, and a lane that took that frame then got a UsageError out of retain() (the
    daemon exited 1). Now it goes back as the reader closes, and the pool is freed at once, without a warning."""
    monkeypatch.setattr(surfaces, "RETIRE_S", 60)
    pool = SurfacePool(64, 3)

    class Reader:
        fps, frames, declared_frames, pts_ms = 30.0, 0, 0, None

        def __init__(self) -> None:
            self.frame = _bgrx(pool)

        def read(self) -> Any:
            frame, self.frame = self.frame, None
            return frame                                    # one frame, then the stream is lost

        def close(self) -> None:
            pool.retire("RTSP stream rtsp://cam.local/live")

    opened: list[Reader] = []

    def opener(uri: Any, max_frame: Any) -> Reader:
        if opened:
            raise SourceError("the camera does not answer")   # the outage goes on
        opened.append(Reader())
        return opened[0]

    camera = Camera("c", parse_uri("rtsp://cam.local/live"), on_event=lambda name, details: None, opener=opener)
    lane = camera.latest.register()                         # a busy lane: it has not taken the frame
    camera.start()
    wait_for(lambda: not trt_ledger.live, what="the pool freed, long before RETIRE_S")
    assert camera.latest.get_after(lane, -1, 0) is None
    assert "still held" not in caplog.text
    assert camera.stop(5)


def test_a_frame_whose_pool_was_freed_is_never_handed_to_a_lane(trt_ledger: fake_cuda.Ledger) -> None:
    latest, stop = LatestFrame(lossless=False), threading.Event()
    lane = latest.register()
    pool = SurfacePool(64, 3)
    assert latest.put(Frame("c", 0, 0, None, _bgrx(pool)), stop=stop)
    pool.free()                                             # retired past RETIRE_S with the frame still kept
    assert latest.get_after(lane, -1, 0) is None            # not a UsageError out of retain()
    assert latest.put(Frame("c", 1, 0, np.zeros((4, 4, 3), np.uint8)), stop=stop)
    assert latest.get_after(lane, -1, 0).index == 1
    assert trt_ledger.live == {}


# --- lanes -------------------------------------------------------------------------------------------------------

def _yolo(path: Path, batch: int | None = 1) -> Path:
    """The detector's input and one YOLO head, [B,3,64,64] -> [B,21,2,2]; B fixed, or symbolic (None)."""
    conv_model(path, input_shape=[batch or 1, 3, 64, 64], out_channels=21, stride=32, yolo_meta=YOLO)
    return set_batch(path, batch)


def _runtime(engine: Any, cameras_: list[str], **fields: Any) -> TaskRuntime:
    config = TaskConfig(name="objects", type="detector", model=str(engine.path), cameras=cameras_, **fields)
    runtime = TaskRuntime(config, Variants({engine.precision: engine}, {}), lambda *_: None)
    runtime.load()
    return runtime


def _trt_engine(tmp_path: Path, **options: Any) -> TensorRTEngine:
    plan = build.build(_yolo(tmp_path / "m.onnx"), say=lambda line: None).plan
    return TensorRTEngine(plan, preprocessing=LetterboxPreprocessing(fill=0.5), **options)


def _feed(camera: Camera, decoder: Decoder, count: int, lane: Lane) -> list[Frame]:
    """Put `count` device frames into the camera's lossless LatestFrame (each once the lane took the one before:
    the lane's reader exists once it took the first), then end the stream."""
    stop, frames = threading.Event(), []
    for index in range(count):
        frames.append(_device(decoder, index, camera.id))
        assert camera.latest.put(frames[-1], stop=stop)
        if index == 0:
            wait_for(lambda: lane.stats.captured, what="the lane's first frame")
    camera.latest.close()
    return frames


def _run(lane: Any) -> None:
    wait_for(lane.finished.is_set, 20, "the lane to finish at the end of the stream")


@pytest.mark.parametrize("graphs", [False, True])
def test_a_lane_hands_device_frames_to_a_slot_that_reads_them_in_place(
        trt_ledger: fake_cuda.Ledger, decoder: Decoder, results: Any, tmp_path: Path, graphs: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    downloads: list[Any] = []
    monkeypatch.setattr("edge.gpu.surfaces.DeviceFrame.download_bgr", lambda self: downloads.append(self))
    publisher, subscriber = results
    with _trt_engine(tmp_path, cuda_graph=graphs) as engine:
        camera = lossless_camera()
        lane = Lane(_runtime(engine, ["c"]), camera, publisher)
        lane.start()
        frames = _feed(camera, decoder, 6, lane)
        _run(lane)
        assert lane.error is None and lane.stats.processed == 6 and downloads == []
        assert [m.payload["size"] for m in published(subscriber, 6)] == [list(SIZE)] * 6
        assert all(frame.device.released for frame in frames)
    _done(decoder, trt_ledger)


def test_a_lane_whose_slot_reads_host_frames_downloads_them_and_says_so_once(
        trt_ledger: fake_cuda.Ledger, decoder: Decoder, results: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    publisher, subscriber = results
    with OnnxRuntimeEngine(_yolo(tmp_path / "m.onnx"), threads=1) as engine:
        camera = lossless_camera()
        lane = Lane(_runtime(engine, ["c"]), camera, publisher)
        lane.start()
        _feed(camera, decoder, 3, lane)
        _run(lane)
        assert lane.error is None and lane.stats.processed == 3
        assert len(published(subscriber, 3)) == 3
    warnings = [r.getMessage() for r in caplog.records if "copied to the host" in r.getMessage()]
    assert len(warnings) == 1 and "the onnxruntime backend reads host frames" in warnings[0]
    _done(decoder, trt_ledger)


def test_a_rate_gated_skip_releases_the_frame(trt_ledger: fake_cuda.Ledger, decoder: Decoder, results: Any,
                                              tmp_path: Path) -> None:
    publisher, _ = results
    with _trt_engine(tmp_path) as engine:
        camera = lossless_camera()
        runtime = _runtime(engine, ["c"])
        runtime.rate_scale = 0.0                            # paused: every frame skipped
        lane = Lane(runtime, camera, publisher)
        lane.start()
        frames = _feed(camera, decoder, 4, lane)
        _run(lane)
        assert lane.stats.skipped_rate == 4 and lane.stats.processed == 0
        assert all(frame.device.released for frame in frames)
    _done(decoder, trt_ledger)


def test_a_failing_slot_ends_the_lane_and_gives_every_surface_back(
        trt_ledger: fake_cuda.Ledger, decoder: Decoder, results: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    publisher, _ = results
    with _trt_engine(tmp_path) as engine:
        camera = lossless_camera()
        lane = Lane(_runtime(engine, ["c"]), camera, publisher)
        monkeypatch.setattr(fake_tensorrt.IExecutionContext, "execute_async_v3", lambda self, stream_handle: False)
        lane.start()
        _feed(camera, decoder, 1, lane)
        _run(lane)
        assert isinstance(lane.error, EngineError) and "execute_async_v3 failed" in lane.error.what
    _done(decoder, trt_ledger)


def test_a_lane_stopped_mid_flight_leaves_no_surface_behind(trt_ledger: fake_cuda.Ledger, decoder: Decoder,
                                                            results: Any, tmp_path: Path) -> None:
    """A live camera keeps replacing its frame while the lane runs two in flight; the lane is stopped mid-stream,
    then the camera: every surface comes back (frames nobody took, frames in flight, the camera's last one)."""
    publisher, _ = results
    with _trt_engine(tmp_path) as engine:
        camera = Camera("c", parse_uri("test://bars?size=64x48"), on_event=lambda name, details: None)
        lane = Lane(_runtime(engine, ["c"], in_flight=2), camera, publisher)
        lane.start()
        stop, index = threading.Event(), 0
        while lane.stats.processed < 3:
            assert camera.latest.put(_device(decoder, index), stop=stop), "the camera refused a frame"
            index += 1
        assert lane.stop(10) and lane.error is None
        camera.stop(1)
    _done(decoder, trt_ledger)


def test_a_lane_that_fails_with_a_frame_in_flight_gives_every_surface_back(
        trt_ledger: fake_cuda.Ledger, decoder: Decoder, results: Any, tmp_path: Path) -> None:
    """The GPU holds the frame's work back, so the lane's wait for it fails: the slot closes once its streams
    finished, and the surface comes back; a frame still in the camera goes back when the camera stops."""
    publisher, _ = results
    with _trt_engine(tmp_path) as engine:
        camera = lossless_camera()
        lane = Lane(_runtime(engine, ["c"]), camera, publisher)
        trt_ledger.hold = True
        lane.start()
        stop = threading.Event()
        assert camera.latest.put(_device(decoder, 0), stop=stop)
        _run(lane)
        assert "inference did not finish" in lane.error.what
        assert camera.latest.put(_device(decoder, 1), stop=stop)
        camera.stop(1)
    _done(decoder, trt_ledger)


@pytest.mark.parametrize("device_slot", [True, False])
def test_a_batched_lane_reads_device_frames_in_place_or_on_the_host(
        trt_ledger: fake_cuda.Ledger, results: Any, tmp_path: Path, device_slot: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    decoder = Decoder(count=8)
    publisher, subscriber = results
    model = _yolo(tmp_path / "b.onnx", batch=None)
    shapes = ["images:1x3x64x64,2x3x64x64,2x3x64x64"]
    engine: Any = (TensorRTEngine(build.build(model, shapes=shapes, say=lambda line: None).plan,
                                  preprocessing=LetterboxPreprocessing(fill=0.5)) if device_slot
                   else OnnxRuntimeEngine(model, threads=1))
    with engine:
        pair = [lossless_camera("c0"), lossless_camera("c1")]
        lane = BatchedLane(_runtime(engine, ["c0", "c1"], batch=True), pair, publisher)
        lane.start()                                        # the feeds' readers are registered now
        stop = threading.Event()

        def feed(camera: Camera) -> None:
            for index in range(3):
                assert camera.latest.put(_device(decoder, index, camera.id), stop=stop)
            camera.latest.close()

        feeders = [threading.Thread(target=feed, args=(camera,)) for camera in pair]
        for feeder in feeders:
            feeder.start()
        _run(lane)
        for feeder in feeders:
            feeder.join(10)
        assert lane.error is None and [member.stats.processed for member in lane.members] == [3, 3]
        assert len(published(subscriber, 6)) == 6
    warnings = [r.getMessage() for r in caplog.records if "copied to the host" in r.getMessage()]
    assert len(warnings) == (0 if device_slot else 1)
    _done(decoder, trt_ledger)


def test_a_paused_batched_lane_over_live_cameras_gives_every_surface_back(
        trt_ledger: fake_cuda.Ledger, results: Any, tmp_path: Path) -> None:
    """Live cameras replace their frames (in the camera, and in the lane's feeds) while the batched lane skips
    every batch (rate scale 0); after the lane and the cameras stop, every surface is back."""
    decoder = Decoder(count=8)
    publisher, _ = results
    plan = build.build(_yolo(tmp_path / "b.onnx", batch=None), shapes=["images:1x3x64x64,2x3x64x64,2x3x64x64"],
                       say=lambda line: None).plan
    with TensorRTEngine(plan, preprocessing=LetterboxPreprocessing(fill=0.5)) as engine:
        pair = [Camera(name, parse_uri("test://bars?size=64x48"), on_event=lambda name, details: None)
                for name in ("c0", "c1")]
        runtime = _runtime(engine, ["c0", "c1"], batch=True)
        runtime.rate_scale = 0.0
        lane = BatchedLane(runtime, pair, publisher)
        lane.start()
        stop, index = threading.Event(), 0
        while sum(member.stats.skipped_rate for member in lane.members) < 6:
            for camera in pair:
                assert camera.latest.put(_device(decoder, index, camera.id), stop=stop)
            index += 1
        assert lane.stop(10) and lane.error is None
        for camera in pair:
            camera.stop(1)
    _done(decoder, trt_ledger)
