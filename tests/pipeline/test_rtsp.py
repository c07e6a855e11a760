"""RTSP cameras against a real RTSP server (GStreamer's, tests/support/rtsp.py; skipped with the reason where it is
missing): a served clip's detections through a real Service and lane against the same clip as a file, a camera
reboot (killed and restarted server) beside a file lane that loses nothing, a stall with the session open
(SIGSTOP), the transport, and 20 reboots with fds, threads and RSS flat. Timings and defaults: docs/reliability.md."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.config.cameras import parse_uri
from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.pipeline.cameras import BACKOFF_MAX_S, Camera, Frame
from edge.pipeline.sources import FFMPEG_OPTIONS, OPEN_TIMEOUT_MS, READ_TIMEOUT_MS, ffmpeg_options
from edge.wire.client import Subscriber
from tests.conftest import PEER_S, free_port, wait_for
from tests.support import clips, rtsp

BALL = rtsp.media("h264")               # a live 320x240 10 fps stream, a key frame a second
# Bounds that hold on a loaded 2-core machine: a stall is lost after its timeout plus this; a restarted server is
# recovered within the longest backoff, the open, and this (the server's own start is not counted).
SLACK_S = 3.0
RECOVER_S = BACKOFF_MAX_S + OPEN_TIMEOUT_MS / 1000 + SLACK_S
LOST_S = READ_TIMEOUT_MS / 1000 + SLACK_S      # a killed server: at once where FFmpeg sees the session closed, else
                                               # after the read timeout (its decoder drained first), both measured


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []

    def __call__(self, name: str, details: dict[str, Any]) -> None:
        self.items.append((time.monotonic(), name, details))

    def names(self) -> list[str]:
        return [name for _, name, _ in self.items]

    def when(self, name: str, after: float) -> float | None:
        return next((t for t, n, _ in self.items if n == name and t >= after), None)


class Server:
    """A served stream on its own port, restartable; `kill` in a finally (the fixture's)."""

    def __init__(self, stream: rtsp.Media) -> None:
        rtsp.require(stream)
        self.stream, self.port = stream, free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        self.process = rtsp.serve(self.port, self.stream)

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)         # a stopped process dies only once continued
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def server() -> Iterator[Server]:
    served = Server(BALL)
    try:
        yield served
    finally:
        served.kill()


def started(uri: str, events: Events) -> Camera:
    camera = Camera("cam", parse_uri(uri), on_event=events)
    camera.start()
    return camera


def steady(camera: Camera) -> tuple[int, int]:
    """Wait until the camera delivers frames steadily (a fresh server's first frames come about 2 s after the camera
    starts); its (outages, recoveries) so far, which the test counts from."""
    frames_after(camera, 10)
    wait_for(lambda: camera.stats.connected, RECOVER_S, "the camera connected")
    return camera.stats.outages, camera.stats.reconnects


def frames_after(camera: Camera, count: int, timeout: float = 20) -> list[Frame]:
    reader, frames, last = camera.latest.register(), [], -1
    try:
        while len(frames) < count:
            frame = camera.latest.get_after(reader, last, timeout)
            assert frame is not None, f"no frame within {timeout} s"
            frames.append(frame)
            last = frame.index
    finally:
        camera.latest.unregister(reader)
    return frames


# --- 3. a stall with the session open --------------------------------------------------------------------------------

@pytest.mark.parametrize("timeout_s", [None, 1.0])
def test_a_stall_with_the_session_open_is_lost_within_the_timeout_and_recovers(server: Server,
                                                                               timeout_s: float | None) -> None:
    """SIGSTOP keeps the server's TCP session open and sends nothing. Before, the camera was lost only after 3 read
    timeouts (6.0 s at 2 s: FFmpeg's decoder threads handed back held frames first); now after one."""
    events = Events()
    expected = 2.0 if timeout_s is None else timeout_s
    camera = started(server.url + ("" if timeout_s is None else f"?timeout={timeout_s:g}"), events)
    try:
        outages, _ = steady(camera)
        stopped = time.monotonic()
        os.kill(server.process.pid, signal.SIGSTOP)
        wait_for(lambda: events.when("camera.lost", stopped), expected + SLACK_S, "camera.lost after the stall")
        lost = events.when("camera.lost", stopped) - stopped
        assert expected - 0.2 <= lost <= expected + SLACK_S, lost
        reason = next(d["reason"] for t, n, d in events.items if n == "camera.lost" and t >= stopped)
        assert reason.startswith("no frame for ") and f"(the stream stalled; timeout {round(expected * 1000)} ms)" \
            in reason
        os.kill(server.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: events.when("camera.recovered", resumed), RECOVER_S, "camera.recovered after SIGCONT")
        assert len(frames_after(camera, 3)) == 3 and camera.stats.outages == outages + 1
    finally:
        server.kill()
        assert camera.stop(10)


# --- 2. a camera reboot ----------------------------------------------------------------------------------------------

def test_a_rebooted_camera_is_lost_then_recovered_within_its_backoff(server: Server) -> None:
    events = Events()
    camera = started(server.url, events)
    try:
        outages, recoveries = steady(camera)
        last = frames_after(camera, 1)[-1].index
        killed = time.monotonic()                       # before: the camera may see it before kill() returns
        server.kill()
        wait_for(lambda: events.when("camera.lost", killed), LOST_S, "camera.lost once the server is gone")
        server.start()
        listening = time.monotonic()
        wait_for(lambda: events.when("camera.recovered", listening), RECOVER_S, "camera.recovered")
        assert frames_after(camera, 3)[0].index > last
        stats = camera.stats
        assert (stats.outages - outages, stats.reconnects - recoveries, stats.connected) == (1, 1, True)
    finally:
        server.kill()
        assert camera.stop(10)


def _service_config(tmp_path: Path, demo: Any, url: str, video: Path) -> str:
    return f"""version: 1
cameras:
  - id: street
    uri: {url}
  - id: file
    uri: file://{video}?realtime=0&loop=1
tasks:
  - name: people
    type: detector
    model: {demo.model}
    cameras: [street, file]
    threads: 1
output:
  results: ipc://{tmp_path}/r.sock
supervisor:
  telemetry: none
"""


def test_a_camera_reboot_leaves_the_other_lane_whole_and_the_heartbeat_counts_it(
        server: Server, demo: Any, tmp_path: Path, ctx: zmq.Context) -> None:
    video = clips.write_video(tmp_path / "numbers.avi", 30, size=(160, 120))
    service = Service(parse_config(_service_config(tmp_path, demo, server.url, video), source="t",
                                   base_dir=tmp_path, environ={}))
    results = Subscriber(f"ipc://{tmp_path}/r.sock", topics=["det.people.file", "sys.event"], context=ctx)
    service.start()
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    frames: list[int] = []
    seqs: list[int] = []
    events: list[str] = []

    def drain() -> None:
        while (message := results.recv(timeout=0.05)) is not None:
            if message.topic == "sys.event":
                events.append(message.payload["event"])
            else:
                frames.append(message.payload["frame"])
                seqs.append(message.payload["seq"])

    try:
        wait_for(lambda: service.publisher.subscriptions == 2, PEER_S, "the subscriber to be connected")
        wait_for(lambda: drain() or len(frames) > 5, 60, "the file lane to publish")
        outages, recoveries = steady(service.cameras.open["street"])
        drain()
        lost, recovered = events.count("camera.lost"), events.count("camera.recovered")
        server.kill()
        wait_for(lambda: drain() or events.count("camera.lost") > lost, 30, "camera.lost on sys.event")
        server.start()
        wait_for(lambda: drain() or events.count("camera.recovered") > recovered, RECOVER_S + 10,
                 "camera.recovered on sys.event")
        during = len(frames)
        wait_for(lambda: drain() or len(frames) > during + 5, 60, "the file lane after the reboot")
        street = next(c for c in service.publish_heartbeat()["cameras"] if c["id"] == "street")
        assert (street["outages"] - outages, street["reconnects"] - recoveries, street["connected"]) == (1, 1, True)
    finally:
        stop.set()
        runner.join(10)
        service.stop()
        results.close()
        server.kill()
    assert frames == list(range(frames[0], frames[0] + len(frames)))       # realtime=0: the file lane lost none
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _resources() -> tuple[int, int, int]:
    """(open fds, threads, RSS in kB) of this process; RSS once glibc's malloc_trim(0) gave the freed heap back, so
    it counts memory in use, not pages the allocator keeps: in a full suite's 600 MB process, RSS grew 9.3 MB from
    reboot 5 to 20 without the trim (an allocator's arenas after 1,700 tests), and the trimmed figure 1.5 MB."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)      # glibc's; another libc keeps its own ways
    if trim is not None:
        trim(0)
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return len(os.listdir("/proc/self/fd")), threading.active_count(), rss


def test_twenty_reboots_leave_fds_threads_and_rss_flat(server: Server) -> None:
    """The first reboots warm FFmpeg and OpenCV up (their buffers, the decoder's threads): compare reboot 5 with 20.
    Bounds: an fd or thread per reboot would be +15, so +2 (a socket in TIME_WAIT teardown) shows none leaks; RSS
    may grow 8 MB (the allocator's arenas), while a leaked decoder (~3 MB each at 320x240) would be 45 MB."""
    events = Events()
    camera = started(server.url, events)
    seen: list[tuple[int, int, int]] = []
    try:
        for reboot in range(20):
            outages, recoveries = steady(camera)
            server.kill()
            wait_for(lambda n=outages: camera.stats.outages > n, LOST_S + 5, f"reboot {reboot}: lost")
            server.start()
            wait_for(lambda n=recoveries: camera.stats.reconnects > n, RECOVER_S + 5, f"reboot {reboot}: recovered")
            seen.append(_resources())
        fds, threads, rss = (b - a for a, b in zip(seen[4], seen[19]))
        assert fds <= 2 and threads <= 2 and rss <= 8192, seen
        assert camera.stats.reconnects >= 20 and camera.stats.outages == camera.stats.reconnects
    finally:
        server.kill()
        assert camera.stop(10)


# --- 4. transport ----------------------------------------------------------------------------------------------------

def _udp_sockets() -> int:
    """UDP sockets this process holds (its socket fds found in /proc/net/udp)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:                 # the listing's own fd, closed by now
            pass
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    rows = [line.split() for name in ("udp", "udp6") for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[9] in inodes)


@pytest.mark.parametrize("transport, udp", [("", 0), ("?transport=tcp", 0), ("?transport=udp", 2)])
def test_the_transport_is_the_uris_and_the_environment_is_given_back(server: Server, transport: str,
                                                                     udp: int) -> None:
    """OpenCV takes FFmpeg's rtsp_transport only from OPENCV_FFMPEG_CAPTURE_OPTIONS: set for the open, then restored.
    UDP: RTP and RTCP each get a socket; TCP: none (interleaved in the RTSP session)."""
    before = os.environ.get(FFMPEG_OPTIONS)
    camera = started(server.url + transport, Events())
    try:
        assert frames_after(camera, 3)[0].size == (320, 240)
        assert _udp_sockets() == udp
        assert os.environ.get(FFMPEG_OPTIONS) == before
    finally:
        server.kill()
        assert camera.stop(10)


@pytest.mark.parametrize("environ, udp", [("probesize;5000000|", 0), ("user_agent;'edge", 0),
                                          ("rtsp_transport;udp", 2)])
def test_the_operators_own_ffmpeg_options_neither_break_nor_lose_the_transport(
        server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, environ: str,
        udp: int) -> None:
    """FFmpeg parses the variable's pairs in order: edge's appended after a trailing '|' became the key
    '|rtsp_transport', after an open quote part of the operator's value; either way ignored, and FFmpeg tried UDP
    first. edge's pair comes first now; an rtsp_transport of the operator's own wins, warned."""
    monkeypatch.setenv(FFMPEG_OPTIONS, environ)
    with caplog.at_level("WARNING", logger="edge.camera"):
        camera = started(server.url + "?transport=tcp", Events())
        try:
            steady(camera)
            assert _udp_sockets() == udp
            assert os.environ.get(FFMPEG_OPTIONS) == environ
        finally:
            server.kill()
            assert camera.stop(10)
    overridden = [r.getMessage() for r in caplog.records if "sets rtsp_transport" in r.getMessage()]
    assert len(overridden) == (1 if udp else 0), overridden


def test_an_open_waiting_for_the_other_transport_is_not_overtaken() -> None:
    """Opens that share a transport overlap; one that needs the other waits for them. Opens of the first transport that
    came after it waited behind it: 8 unreachable tcp cameras retrying (2 s opens) would otherwise hold the variable
    for good, and a udp camera would never open."""
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with ffmpeg_options.using("tcp"):
            holding.set()
            release.wait(10)
            order.append("tcp first")

    def later(transport: str) -> None:
        with ffmpeg_options.using(transport):
            order.append(f"{transport} {os.environ[FFMPEG_OPTIONS].split('|')[0]}")
    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(10)
    for transport in ("udp", "tcp"):
        threads.append(threading.Thread(target=later, args=(transport,)))
        threads[-1].start()
        wait_for(lambda: len(ffmpeg_options._queue) == len(threads) - 1, 10, f"the {transport} open waits")
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["tcp first", "udp rtsp_transport;udp", "tcp rtsp_transport;tcp"]


# --- 1. frames from a real server ------------------------------------------------------------------------------------

def _f1(found: list[list[float]], truth: list[list[float]], iou: float = 0.5) -> tuple[int, int, int]:
    """(matched, found, truth): boxes [x1, y1, x2, y2, score, class] matched greedily by IoU >= `iou`, same class."""
    left, matched = list(truth), 0
    for box in found:
        for other in left:
            if box[5] == other[5] and _iou(box, other) >= iou:
                left.remove(other)
                matched += 1
                break
    return matched, len(found), len(truth)


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.fixture(scope="session")            # as `demo`'s, so it runs first: pytest sets up wider scopes first
def clip_server() -> None:
    """Skips where the server cannot serve a clip, before `demo` fetches the assets (which a machine without the
    server may have no network for)."""
    rtsp.require(rtsp.clip(Path("/dev/null")))


@pytest.mark.parametrize("decode", ["cpu", pytest.param("nvdec", marks=pytest.mark.gpu)])
def test_a_served_clip_gives_the_detections_of_the_same_clip_as_a_file(clip_server: None, demo: Any, tmp_path: Path,
                                                                       ctx: zmq.Context, decode: str) -> None:
    """The demo model through a real Service: the H.264 clip served as it is (no re-encode, so the decoded frames are
    the file's bit for bit) and read as a file; frame by frame (the camera's index is the clip's frame while none
    is lost), F1 >= 0.95 at IoU 0.5 over the frames the live lane processed (a slow lane skips some); measured 1.0
    on the CPU path (116 of 116 boxes over 20 frames)."""
    clip = clips.clip("h264", demo.root)
    served = Server(rtsp.clip(clip))
    text = _service_config(tmp_path, demo, served.url, clip).replace("?realtime=0&loop=1", "?realtime=0").replace(
        f"uri: {served.url}\n", f"uri: {served.url}\n    decode: {decode}\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}))
    results = Subscriber(f"ipc://{tmp_path}/r.sock", topics=["det.people."], context=ctx)
    got: dict[str, dict[int, list[list[float]]]] = {"street": {}, "file": {}}
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))

    def drain() -> None:
        while (message := results.recv(timeout=0.05)) is not None:
            got[message.payload["camera"]][message.payload["frame"]] = message.payload["detections"]

    try:
        service.start()
        runner.start()
        wait_for(lambda: drain() or (len(got["file"]) == clips.decoded_frames(clip)
                                      and not service.cameras.open["street"].stats.connected), 60,
                 "every file frame, and the served clip's end")
    finally:
        stop.set()
        runner.join(10)
        service.stop()
        results.close()
        served.kill()
    both = sorted(set(got["street"]) & set(got["file"]))
    assert len(both) >= 10, sorted(got["street"])
    matched, found, truth = (sum(counts) for counts in zip(*(_f1(got["street"][i], got["file"][i]) for i in both)))
    assert truth > 0 and 2 * matched / (found + truth) >= 0.95, (matched, found, truth)
