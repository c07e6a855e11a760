"""Cameras: URI parsing, LatestFrame, real video decode, lost/recovered, bounded stop, damaged files."""
from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config.cameras import MAX_FRAME, parse_uri
from edge.errors import SourceError
from edge.pipeline import cameras, readers
from edge.pipeline.cameras import Camera, EndOfStream, Frame, LatestFrame
from edge.pipeline.readers import open_reader
from tests.conftest import free_port, wait_for
from tests.support.clips import write_video
from tests.support.daemon import ROOT, env


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, details: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((name, details))

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.items]


def drain(camera: Camera, reader: int, limit: int = 10_000) -> list[Frame]:
    """Every frame `reader` (registered before the camera started: a lossless file waits only for registered
    readers) gets until the end of the stream."""
    frames, last = [], -1
    try:
        while len(frames) < limit:
            frame = camera.latest.get_after(reader, last, timeout=10)
            assert frame is not None, "camera produced no frame within 10 s"
            frames.append(frame)
            last = frame.index
    except EndOfStream:
        pass
    return frames


def test_latest_frame_replaces_older() -> None:
    latest, stop = LatestFrame(lossless=False), threading.Event()
    reader = latest.register()
    image = np.zeros((2, 2, 3), np.uint8)
    for i in range(3):
        assert latest.put(Frame("c", i, i, image), stop=stop)
    assert latest.get_after(reader, -1, 0).index == 2
    assert latest.get_after(reader, 2, 0) is None
    latest.close()
    with pytest.raises(EndOfStream):
        latest.get_after(reader, 2, 0)


def test_latest_frame_lossless_waits_for_every_reader() -> None:
    latest, stop = LatestFrame(lossless=True), threading.Event()
    a, b = latest.register(), latest.register()
    image = np.zeros((2, 2, 3), np.uint8)
    latest.put(Frame("c", 0, 0, image), stop=stop)
    done = threading.Event()
    producer = threading.Thread(target=lambda: (latest.put(Frame("c", 1, 1, image), stop=stop), done.set()))
    producer.start()
    assert latest.get_after(a, -1, 1).index == 0
    assert not done.wait(0.05)          # reader b has not read frame 0 yet: the producer must wait
    assert latest.get_after(b, -1, 1).index == 0
    wait_for(done.is_set, 5, "producer to continue")
    producer.join(5)


def test_file_camera_decodes_every_frame_when_not_realtime(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 40)
    camera = Camera("c", parse_uri(f"file://{video}?realtime=0"), on_event=Events())
    reader_frames: list[Frame] = []
    reader = camera.latest.register()
    thread = threading.Thread(target=lambda: reader_frames.extend(drain(camera, reader)))
    thread.start()
    camera.start()
    thread.join(20)
    assert [f.index for f in reader_frames] == list(range(40))
    assert reader_frames[0].image.shape == (120, 160, 3)
    assert all(b.t_capture_ns >= a.t_capture_ns for a, b in zip(reader_frames, reader_frames[1:]))
    assert camera.stop(5)


def _decode(camera: Camera, caplog: pytest.LogCaptureFixture, level: str, timeout: float) -> list[Frame]:
    """Start `camera` on a file and take all its frames, logging the camera's records at `level`."""
    frames: list[Frame] = []
    reader = camera.latest.register()
    thread = threading.Thread(target=lambda: frames.extend(drain(camera, reader)))
    with caplog.at_level(level, logger="edge.camera"):
        thread.start()
        camera.start()
        thread.join(timeout)
    return frames


def test_demo_video_decodes_to_its_end_without_a_length_warning(demo: Any, caplog: pytest.LogCaptureFixture) -> None:
    camera = Camera("vtest", parse_uri(f"file://{demo.video}?realtime=0"), on_event=Events())
    frames = _decode(camera, caplog, "DEBUG", 120)
    assert len(frames) == 795 and frames[0].image.shape == (576, 768, 3)
    assert camera.stats.missing_frames == 0
    assert [r.getMessage() for r in caplog.records if "header declares" in r.getMessage()] == []
    assert "vtest: end of stream after 795 frames" in caplog.messages
    camera.stop(5)


DEMO_FRAMES = 795


def _cut(demo: Any, path: Path, share: float) -> Path:
    """The first `share` of the demo video's bytes: its header still declares all 795 frames."""
    data = Path(demo.video).read_bytes()
    path.write_bytes(data[:int(len(data) * share)])
    return path


def _frames_in(path: Path) -> int:
    reader = open_reader(parse_uri(f"file://{path}"))
    try:
        count = 0
        while reader.read() is not None:
            count += 1
        return count
    finally:
        reader.close()


def test_a_file_cut_at_half_warns_with_both_counts_and_counts_the_missing_frames(
        demo: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    half = _cut(demo, tmp_path / "half.avi", 0.5)
    camera = Camera("c", parse_uri(f"file://{half}?realtime=0"), on_event=Events())
    frames = _decode(camera, caplog, "INFO", 60)
    assert 300 < len(frames) < 500                      # it decodes what is there, then ends
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"c: video file {half} ended after {len(frames)} of the {DEMO_FRAMES} frames its header"
                        f" declares: the file may be truncated or corrupt (copied before it was complete?);"
                        f" `ffmpeg -v error -i {half} -f null -` lists what FFmpeg finds wrong with it"]
    assert camera.stats.missing_frames == DEMO_FRAMES - len(frames)
    assert camera.stop(5)


def test_a_short_looping_file_warns_once_and_counts_every_pass(
        demo: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = _cut(demo, tmp_path / "short.avi", 0.05)
    per_pass = DEMO_FRAMES - _frames_in(short)
    camera = Camera("c", parse_uri(f"file://{short}?realtime=0&loop=1"), on_event=Events())
    with caplog.at_level("DEBUG", logger="edge.camera"):
        camera.start()                                  # no reader registered: frames flow without waiting
        wait_for(lambda: camera.stats.missing_frames >= 3 * per_pass, 60, "three short passes")
        assert camera.stop(5)
    short_passes = [r for r in caplog.records if "header declares" in r.getMessage()]
    assert [r.levelname for r in short_passes][:3] == ["WARNING", "DEBUG", "DEBUG"]
    assert camera.stats.missing_frames == len(short_passes) * per_pass


@pytest.mark.parametrize("frames, declared, short", [
    (397, 795, True), (755, 795, True), (756, 795, False), (795, 795, False), (800, 795, False),
    (1, 5, True), (2, 5, False), (0, 0, False), (10, 0, False)])
def test_ended_short_allows_five_percent_or_three_frames(frames: int, declared: int, short: bool) -> None:
    assert cameras.ended_short(frames, declared) is short


_READ_DAMAGED = """
import sys
from edge.log import setup_logging
from edge.config.cameras import parse_uri
from edge.pipeline.cameras import Camera, EndOfStream
setup_logging(sys.argv[2])
camera = Camera("c", parse_uri(f"file://{sys.argv[1]}?realtime=0"), on_event=lambda name, details: None)
reader, last = camera.latest.register(), -1
camera.start()
try:
    while last + 1 < int(sys.argv[3]):
        frame = camera.latest.get_after(reader, last, 30)
        if frame is None:
            sys.exit("no frame within 30 s")
        last = frame.index
except EndOfStream:
    pass
camera.stop(5)
sys.stderr.write(f"RESULT {last + 1} {camera.stats.missing_frames}\\n")   # FFmpeg writes to stdout
"""


@pytest.fixture(scope="module")
def damaged_video(demo: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo video with 3,000 random bits flipped past its header (fixed seed): it still decodes all its
    frames, FFmpeg concealing the damage, and FFmpeg reports over 10,000 errors on the way."""
    data = bytearray(Path(demo.video).read_bytes())
    rng = random.Random(7)
    for _ in range(3000):
        data[rng.randrange(4096, len(data))] ^= 1 << rng.randrange(8)
    path = tmp_path_factory.mktemp("damaged") / "damaged.avi"
    path.write_bytes(bytes(data))
    return path


def _read_in_a_process(video: Path, level: str, frames: int, **environ: str) -> tuple[list[str], int, int]:
    """Read `video` through a file camera in a fresh process (FFmpeg's log is set up once per process):
    every line it wrote to stdout or stderr besides its result, the frames read and the missing frames."""
    clean = {k: v for k, v in env().items() if k not in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", _READ_DAMAGED, str(video), level, str(frames)], cwd=ROOT,
                          env={**clean, **environ}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    result = done.stderr.splitlines()[-1:]
    assert result and result[0].startswith("RESULT "), done.stderr[-2000:]
    _, read, missing = result[0].split()
    return lines[:-1], int(read), int(missing)


def test_a_damaged_file_is_quiet_at_info(damaged_video: Path) -> None:
    lines, read, missing = _read_in_a_process(damaged_video, "info", DEMO_FRAMES + 1)
    assert len(lines) <= 4, lines[:10]                 # started, end of stream (before: 10,736 FFmpeg lines)
    assert read == DEMO_FRAMES
    assert missing == 0                                # concealed damage: every frame arrived, none counts missing


@pytest.mark.parametrize("level, environ", [("debug", {}), ("info", {"OPENCV_FFMPEG_LOGLEVEL": "16"})],
                         ids=["edge-at-debug", "operator-set-ffmpeg-level"])
def test_ffmpeg_errors_show_at_debug_or_when_the_operator_asks(damaged_video: Path, level: str,
                                                               environ: dict[str, str]) -> None:
    lines, read, _ = _read_in_a_process(damaged_video, level, 60, **environ)
    ffmpeg = [line for line in lines if line.startswith("[OPENCV:FFMPEG:16]")]
    assert read == 60 and len(ffmpeg) > 100, lines[:10]


def test_missing_camera_file_fails_start(tmp_path: Path) -> None:
    camera = Camera("front", parse_uri(f"file://{tmp_path}/missing.avi"), on_event=Events())
    with pytest.raises(SourceError, match="camera 'front': camera file does not exist") as info:
        camera.start()
    assert "Hint:" in str(info.value)


@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a directory", "a name over NAME_MAX"])
def test_a_file_camera_that_is_no_video_file_says_what_it_is(tmp_path: Path, kind: str) -> None:
    """/dev/zero and a FIFO were reported as "does not exist"; a name longer than NAME_MAX (255 bytes on Linux)
    raised a raw OSError (ENAMETOOLONG) out of Path.is_file(), which ended the daemon on SIGHUP. None of them is
    opened: a FIFO would block the caller until a writer came."""
    fifo = tmp_path / "cam.fifo"
    os.mkfifo(fifo)
    path, says = {"a FIFO": (fifo, "is not a regular file but a FIFO"),
                  "a character device": (Path("/dev/zero"), "is not a regular file but a character device"),
                  "a directory": (tmp_path, "is not a regular file but a directory"),
                  "a name over NAME_MAX": (tmp_path / ("v" * 300 + ".avi"), "cannot be used: File name too long"),
                  }[kind]
    camera = Camera("front", parse_uri(f"file://{path}"), on_event=Events())
    with pytest.raises(SourceError, match=f"camera 'front': camera file .* {says}") as info:
        camera.start()
    assert "Hint:" in str(info.value) and "does not exist" not in str(info.value)
    assert camera.stop(5)


def test_a_video_declaring_frames_over_the_limit_is_refused_before_a_frame_is_decoded(tmp_path: Path) -> None:
    """A file that declares 16000x16000 frames took the daemon to 3.7 GB: its size is read from the header when the
    file opens, and nothing is decoded. A smaller limit in the config refuses the same way."""
    video = write_video(tmp_path / "wide.avi", 2, size=(320, 240))
    camera = Camera("front", parse_uri(f"file://{video}"), on_event=Events(), max_frame=(160, 240))
    with pytest.raises(SourceError, match=f"camera 'front': video file {video} declares frames of 320x240, larger"
                       " than the 160x240 this camera accepts") as info:
        camera.start()
    assert "max_frame_size" in str(info.value)
    assert camera.stop(5)
    assert MAX_FRAME == (7680, 4320)
    with pytest.raises(SourceError, match="test pattern bars has frames of 8192x4320"):
        Camera("t", parse_uri("test://bars?size=8192x4320"), on_event=Events()).start()


def test_a_frame_larger_than_its_header_said_ends_the_file_with_the_camera_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A header that lies (or a stream that changes size): every decoded frame is checked too."""
    video = write_video(tmp_path / "v.avi", 4, size=(320, 240))
    real_read = readers._CvReader.read
    monkeypatch.setattr(readers._CvReader, "read",
                        lambda self: None if (image := real_read(self)) is None else np.zeros((400, 320, 3), np.uint8)
                        if self.frames == 3 else image)
    events = Events()
    camera = Camera("front", parse_uri(f"file://{video}?realtime=0"), on_event=events, max_frame=(320, 240))
    reader = camera.latest.register()
    camera.start()
    frames = drain(camera, reader)
    assert [f.index for f in frames] == [0, 1]
    assert events.items[-1] == ("camera.lost", {"camera": "front", "reason": "camera 'front' delivered frames of"
                                                " 320x400, larger than the 320x240 this camera accepts"})
    assert any("the file is not read further" in m for m in caplog.messages)
    assert camera.stop(5)


def test_a_file_no_backend_can_open_fails_start_with_a_hint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(bytes(range(256)) * 64)
    camera = Camera("front", parse_uri(f"file://{junk}"), on_event=Events())
    with pytest.raises(SourceError, match=f"camera 'front': cannot open video file {junk}") as info:
        camera.start()
    assert "Hint: `edge run --log-level debug` shows what FFmpeg and OpenCV said about it" in str(info.value)


def test_test_pattern_honours_frame_limit() -> None:
    camera = Camera("t", parse_uri("test://bars?size=64x48&frames=7&realtime=0"), on_event=Events())
    frames: list[Frame] = []
    reader = camera.latest.register()
    thread = threading.Thread(target=lambda: frames.extend(drain(camera, reader)))
    thread.start()
    camera.start()
    thread.join(10)
    assert len(frames) == 7 and frames[0].image.shape == (48, 64, 3)
    camera.stop(5)


def test_unreachable_rtsp_reports_lost_and_stops_in_bounded_time() -> None:
    events = Events()
    camera = Camera("rear", parse_uri(f"rtsp://127.0.0.1:{free_port()}/live"), on_event=events)
    camera.start()                                   # a live camera that is down does not fail the start
    wait_for(lambda: "camera.lost" in events.names(), 10, "camera.lost event")
    assert events.items[0][1]["camera"] == "rear"
    assert not camera.stats.connected
    assert camera.stop(5)


def test_looping_file_lost_and_recovered(tmp_path: Path) -> None:
    video = write_video(tmp_path / "loop.avi", 5)
    kept = tmp_path / "kept.avi"
    events = Events()
    camera = Camera("c", parse_uri(f"file://{video}?realtime=0&loop=1"), on_event=events)
    reader = camera.latest.register()
    camera.start()
    assert camera.latest.get_after(reader, -1, 10) is not None
    video.rename(kept)                               # the file disappears: the next loop cannot reopen it
    seen = [-1]

    def consume_until_lost() -> bool:              # keep consuming (lossless) until the loop fails
        frame = camera.latest.get_after(reader, seen[0], 0.05)
        seen[0] = frame.index if frame is not None else seen[0]
        return "camera.lost" in events.names()
    wait_for(consume_until_lost, 10, "camera.lost event")
    last = seen[0]
    kept.rename(video)
    wait_for(lambda: "camera.recovered" in events.names(), 15, "camera.recovered event")
    assert camera.stats.reconnects == 1
    frame = camera.latest.get_after(reader, last, 10)
    assert frame is not None and frame.index > last   # frames flow again, indexes keep increasing
    assert camera.stop(5)


def test_csi_without_gstreamer_is_a_clear_error() -> None:
    import cv2

    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer; the error path needs one without")
    with pytest.raises(SourceError, match="needs OpenCV with GStreamer") as info:
        open_reader(parse_uri("csi://0"))
    assert "JetPack's OpenCV" in str(info.value)


class _RecordedStop(threading.Event):
    """The camera's stop event, recording each backoff wait and returning at once (no sleeping);
    it reports a stop after `waits` waits, which ends the capture thread's loop."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self._limit = waits

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self._limit:
            self.set()
        return self.is_set()


class _NoFrames:
    """A live device that opens but delivers no frame (unplugged right after opening)."""

    fps = 30.0

    def read(self) -> None:
        return None

    def close(self) -> None:
        pass


def _reconnecting_camera(monkeypatch: pytest.MonkeyPatch, opens: list[bool], waits: int,
                         events: Callable[[Camera], Any] = lambda camera: Events()) -> tuple[Camera, _RecordedStop]:
    """Run a lost v4l2 camera's capture loop in this thread; `opens` says which reconnect attempts succeed."""
    attempts = iter(opens)

    def open_reader(uri: Any, max_frame: Any) -> _NoFrames:
        if next(attempts, False):
            return _NoFrames()
        raise SourceError("cannot open V4L2 device /dev/video9")
    monkeypatch.setattr("edge.pipeline.cameras.open_reader", open_reader)
    camera = Camera("rear", parse_uri("v4l2:///dev/video9"), on_event=lambda name, details: sink(name, details))
    sink = events(camera)
    stop = camera._stop = _RecordedStop(waits)
    camera._run()                                     # the reader is None: the camera starts lost
    return camera, stop


def test_reconnect_backoff_doubles_from_half_a_second_up_to_ten(monkeypatch: pytest.MonkeyPatch) -> None:
    _, stop = _reconnecting_camera(monkeypatch, opens=[], waits=9)
    assert stop.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_reconnect_backoff_starts_over_after_a_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    _, stop = _reconnecting_camera(monkeypatch, opens=[False, False, True, False], waits=6)
    assert stop.waits == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]   # third attempt opened, then the device was lost again


def test_lost_and_recovered_events_stats_and_log(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Two recoveries, each followed by a device that delivers nothing: the events (with the state the
    heartbeat reports at that moment), the reconnect count, and what the operator reads in the log."""
    seen: list[tuple[str, dict[str, Any], bool]] = []

    def events(camera: Camera) -> Callable[[str, dict[str, Any]], None]:
        return lambda name, details: seen.append((name, details, camera.stats.connected))
    with caplog.at_level("DEBUG", logger="edge.camera"):
        camera, stop = _reconnecting_camera(monkeypatch, opens=[False, True, True], waits=5, events=events)
    assert stop.waits == [0.5, 1.0, 0.5, 0.5, 1.0]
    lost = ("camera.lost", {"camera": "rear", "reason": "no frame from the device"}, False)
    recovered = ("camera.recovered", {"camera": "rear"}, True)
    assert seen == [recovered, lost, recovered, lost]
    assert camera.stats.reconnects == 2 and camera.stats.connected is False
    failed = "rear: reconnect failed: cannot open V4L2 device /dev/video9"
    assert [r.getMessage() for r in caplog.records] == [
        failed, "rear recovered", "rear lost: no frame from the device", "rear recovered",
        "rear lost: no frame from the device", failed]
    assert [r.levelname for r in caplog.records] == ["DEBUG", "INFO", "WARNING", "INFO", "WARNING", "DEBUG"]


def test_a_bad_camera_uri_is_a_config_error_that_hides_the_password(tmp_path) -> None:
    from edge.config.loader import parse_config
    from edge.errors import ConfigError

    text = ("version: 1\ncameras:\n  - id: c\n    uri: rtsp://u:s3cret@host:99999/x\ntasks:\n  - name: t\n"
            "    type: detector\n    model: m.onnx\n    cameras: [c]\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml", base_dir=tmp_path, environ={})
    assert "cameras[0].uri" in str(info.value) and "port outside 1..65535" in str(info.value)
    assert "s3cret" not in str(info.value)
