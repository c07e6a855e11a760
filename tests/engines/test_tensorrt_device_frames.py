"""Device frames on a TensorRT slot (submit_device_frame / submit_device_frames) against the stand-ins
(tests/support/fake_tensorrt.py on tests/support/fake_cuda.py, whose trt_ledger holds events back on demand): the
stream waits on the frame's ready event, the colour + letterbox kernel (GpuLetterbox.launch_planes, spied on for
its arguments) writes the record's device input, the frame is released on that stream after it, and the surface
goes back to its pool only once that release's event completed; failures release it too; in CUDA graph mode the
kernel runs before the record's graph, which a new surface does not recapture (docs/gpu.md section 4)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.engines.base import LetterboxPreprocessing
from edge.engines.tensorrt import build
from edge.engines.tensorrt.engine import TensorRTEngine
from edge.errors import EngineError, UsageError
from edge.gpu.letterbox import GpuLetterbox
from edge.letterbox import Letterbox
from tests.support import fake_cuda, fake_tensorrt
from tests.support.device_frames import NV12, Decoder
from tests.support.models import conv_model

LETTERBOX = LetterboxPreprocessing(fill=0.5)
WIDTH, HEIGHT, PITCH = NV12["width"], NV12["height"], NV12["pitch"]


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every GpuLetterbox.launch_planes call (the colour kernels' interface), run for real after it is noted."""
    real = GpuLetterbox.launch_planes
    calls: list[dict[str, Any]] = []

    def spy(self: GpuLetterbox, planes: Any, pitch: int, width: int, height: int, out_pointer: int, stream: Any,
            **options: Any) -> Letterbox:
        calls.append({"planes": tuple(planes), "pitch": pitch, "size": (width, height), "out": out_pointer,
                      "stream": stream.handle, **options})
        return real(self, planes, pitch, width, height, out_pointer, stream, **options)

    monkeypatch.setattr(GpuLetterbox, "launch_planes", spy)
    return calls


def _plan(tmp_path: Path) -> Path:
    onnx_path = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 8, 8], out_channels=3, stride=1, n_outputs=2)
    return build.build(onnx_path, say=lambda line: None).plan


def _entries(trt_ledger: fake_cuda.Ledger, mark: int, stream: int) -> list[str]:
    return [entry[0] for entry in trt_ledger.trace[mark:] if len(entry) > 1 and entry[1] == stream]


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
def test_a_device_frame_is_read_in_place_and_released_after_its_kernel(
        trt_ledger: fake_cuda.Ledger, launches: list[dict[str, Any]], tmp_path: Path, mode: str) -> None:
    decoder = Decoder()
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, copy_mode=mode) as engine:
        slot = engine.create_slot("cam", depth=2)
        assert slot.takes_device_frames and slot.device_frames_refused == ""
        for n in range(4):
            frame = decoder.frame()
            planes, ready = frame.planes, frame.ready
            mark = len(trt_ledger.trace)
            pending, box = slot.submit_device_frame(frame)
            assert box == Letterbox.fit(WIDTH, HEIGHT, 8, 8)
            record = slot.frames[n % 2]
            assert launches[-1] == {"planes": planes, "pitch": PITCH, "size": (WIDTH, HEIGHT),
                                    "out": record.device_input.pointer, "stream": slot.upload.handle,
                                    "pixel_format": "nv12", "matrix": "bt709", "full_range": False}
            upload = trt_ledger.trace[mark:]
            assert upload[0] == ("wait", slot.upload.handle, ready)            # the decoder's writes first
            kinds = _entries(trt_ledger, mark, slot.upload.handle)
            assert kinds[:4] == ["wait", "kernel", "record", "record"]         # kernel, its done, the release
            assert frame.released
            pending.wait(0)
        assert decoder.back(3)                                                 # every surface came back
        slot.close()
    decoder.free()
    assert trt_ledger.live == {}


def test_a_surface_is_not_reused_while_the_kernel_reading_it_may_run(
        trt_ledger: fake_cuda.Ledger, launches: list[dict[str, Any]], tmp_path: Path) -> None:
    decoder = Decoder(count=1)
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cam", depth=1)
        trt_ledger.hold = True
        pending, _ = slot.submit_device_frame(decoder.frame())
        assert not decoder.back(), "the surface came back before its kernel ran"
        trt_ledger.finish()
        pending.wait(0)
        assert decoder.back()
        slot.close()
    decoder.free()
    assert trt_ledger.live == {}


@pytest.mark.parametrize("mode", ["copy", "zerocopy"])
def test_in_graph_mode_the_kernel_runs_before_the_graph_and_new_surfaces_reuse_it(
        trt_ledger: fake_cuda.Ledger, launches: list[dict[str, Any]], tmp_path: Path, mode: str) -> None:
    """A surface's address differs per frame: the colour kernel is launched on the record's stream before its
    graph (engine + downloads), so one capture per record serves every surface."""
    decoder = Decoder(count=3)
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX, copy_mode=mode, cuda_graph=True) as engine:
        slot = engine.create_slot("cam", depth=2)
        assert slot.graphs and slot.takes_device_frames
        for n in range(6):
            record = slot.frames[n % 2]
            stream = record.graph.stream.handle
            mark = len(trt_ledger.trace)
            slot.submit_device_frame(decoder.frame())[0].wait(0)
            assert launches[-1]["stream"] == stream and launches[-1]["out"] == record.device_input.pointer
            kinds = _entries(trt_ledger, mark, stream)
            assert kinds[:4] == ["wait", "kernel", "record", "record"]
            if n >= 2:
                assert kinds[4:] == ["graph", "record"], "a later frame is one graph launch after its kernel"
        assert trt_ledger.captures == 2 and slot.frames[0].graph.key == ("device",)
        assert len({call["planes"] for call in launches}) == 3                # three surfaces, no recapture
        slot.close()
    decoder.free()
    assert trt_ledger.live == {}


def test_a_batched_slot_letterboxes_each_device_frame_into_its_row(
        trt_ledger: fake_cuda.Ledger, launches: list[dict[str, Any]], tmp_path: Path) -> None:
    from tests.pipeline.test_batched import DYNAMIC, identity_plan

    decoder = Decoder(count=3)
    with TensorRTEngine(identity_plan(tmp_path, batch=None, shapes=DYNAMIC), preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cams", depth=2, batch=3)
        assert slot.takes_device_frames
        frames = [decoder.frame(), decoder.frame()]
        pending, boxes = slot.submit_device_frames(frames)
        base, step = slot.frames[0].device_input.pointer, slot.frames[0].letterbox.nbytes
        assert [call["out"] for call in launches] == [base, base + step]
        assert boxes == [Letterbox.fit(WIDTH, HEIGHT, 8, 8)] * 2 and all(frame.released for frame in frames)
        assert pending.wait(0)["out0"].shape[0] == 2
        with pytest.raises(UsageError, match="does not take device frames"):
            slot.submit_device_frame(decoder.frame())
        slot.close()
    assert decoder.back()
    decoder.free()
    assert trt_ledger.live == {}


def test_a_failed_submission_releases_the_frame_once_its_streams_settled(
        trt_ledger: fake_cuda.Ledger, launches: list[dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = Decoder(count=1)
    with TensorRTEngine(_plan(tmp_path), preprocessing=LETTERBOX) as engine:
        slot = engine.create_slot("cam", depth=1)
        trt_ledger.hold = True
        monkeypatch.setattr(fake_tensorrt.IExecutionContext, "execute_async_v3", lambda self, stream_handle: False)
        frame = decoder.frame()
        with pytest.raises(EngineError, match="execute_async_v3 failed on slot cam"):
            slot.submit_device_frame(frame)
        assert frame.released and ("synchronize", slot.upload.handle) in trt_ledger.trace
        assert decoder.back() and slot.in_flight() == 0
        monkeypatch.undo()
        monkeypatch.setattr(GpuLetterbox, "launch_planes", lambda *args, **options: (_ for _ in ()).throw(
            EngineError("the kernel launch failed")))
        frame = decoder.frame()
        with pytest.raises(EngineError, match="the kernel launch failed"):
            slot.submit_device_frame(frame)
        assert frame.released and decoder.back()
        slot.close()
    decoder.free()
    assert trt_ledger.live == {}


def test_a_slot_that_cannot_read_device_frames_refuses_them_and_releases_them(
        trt_ledger: fake_cuda.Ledger, tmp_path: Path) -> None:
    decoder = Decoder(count=1)
    with TensorRTEngine(_plan(tmp_path)) as engine:                 # no GPU preprocessing named
        slot = engine.create_slot("cam", depth=1)
        assert not slot.takes_device_frames
        assert slot.device_frames_refused == "no preprocessing named for the GPU"
        frame = decoder.frame()
        with pytest.raises(UsageError, match="does not take device frames") as info:
            slot.submit_device_frame(frame)
        assert "no preprocessing named for the GPU" in str(info.value) and "download_bgr" in str(info.value)
        assert frame.released and decoder.back()
        slot.close()
        frame = decoder.frame()
        with pytest.raises(UsageError, match="is closed"):
            slot.submit_device_frame(frame)
        assert frame.released
    decoder.free()
    assert trt_ledger.live == {}
