"""End to end: `edge run` in a subprocess on the demo video, an independent subscriber, signals, failures."""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import msgpack
import pytest
import zmq

from tests.conftest import free_port
from tests.support.daemon import RawSubscriber, env, one_task, run, start, write_config

N = 12
DET_KEYS = {"v", "kind", "task", "camera", "seq", "frame", "t_capture_ns", "t_publish_ns", "t_wall_ns",
            "precision", "engine", "size", "detections", "labels"}


def collect(sub: RawSubscriber, proc, until) -> dict[str, list[dict]]:
    """Messages by topic until `until(messages)` or the daemon exits and nothing more arrives (60 s cap)."""
    messages: dict[str, list[dict]] = collections.defaultdict(list)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not until(messages):
        got = sub.recv(200)
        if got is not None:
            messages[got[0]].append(got[1])
        elif proc.poll() is not None:
            break
    return messages


def test_run_publishes_exactly_n_per_lane(demo, tmp_path: Path, ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/results.sock"
    sub = RawSubscriber(ctx, endpoint)
    proc = start(write_config(tmp_path, demo, endpoint), "--max-frames", str(N), "--wait-subscriber", "60")
    messages = collect(sub, proc, lambda m: False)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    lanes = {"det.objects.cam0": (768, 576), "det.objects.cam1": (320, 240), "det.people.cam0": (768, 576)}
    assert {t for t in messages if t.startswith("det.")} == set(lanes)
    for topic, (width, height) in lanes.items():
        got = messages[topic]
        assert [m["seq"] for m in got] == list(range(N)), topic                  # exactly N, contiguous
        assert [m["frame"] for m in got] == list(range(N)), topic                # realtime=0: no frame dropped
        for m in got:
            assert set(m) == DET_KEYS and m["v"] == 1 and m["kind"] == "det"
            assert m["size"] == [width, height] and m["precision"] == "fp32"
            assert m["t_capture_ns"] <= m["t_publish_ns"]
            assert len(m["labels"]) == len(m["detections"])
            for x1, y1, x2, y2, score, cls in m["detections"]:
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height and 0 < score <= 1
                assert isinstance(cls, int) and 0 <= cls < 80
    people = [label for m in messages["det.objects.cam0"] for label in m["labels"] if label == "person"]
    assert len(people) >= 3 * N                                                  # vtest: about 5 people a frame
    beats = messages["sys.heartbeat"]
    assert beats and beats[-1]["lanes"][0]["processed"] == N
    assert {c["id"] for c in beats[-1]["cameras"]} == {"cam0", "cam1"}            # 'unused' never opened
    assert all(c["missing_frames"] == 0 for c in beats[-1]["cameras"])
    assert {k: beats[-1][k] for k in ("connections", "subscriptions", "refused_connections", "rejected_inbound")} \
        == {"connections": 1, "subscriptions": 1, "refused_connections": 0, "rejected_inbound": 0}
    assert "unused" not in stderr
    sub.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_everything_with_exit_0(demo, tmp_path: Path, ctx: zmq.Context, signum: int) -> None:
    endpoint = f"ipc://{tmp_path}/r.sock"
    sub = RawSubscriber(ctx, endpoint, b"det.")
    config = write_config(tmp_path, demo, endpoint, cameras=f"\n  - id: cam0\n    uri: file://{demo.video}?loop=1\n",
                          tasks=one_task(demo.model))
    proc = start(config, "--wait-subscriber", "60")
    assert collect(sub, proc, lambda m: len(m["det.objects.cam0"]) >= 2)["det.objects.cam0"]
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=10)                     # the service bounds its stop at 5 s
    assert proc.returncode == 0, stderr
    assert f"received {signal.Signals(signum).name}, stopping" in stderr and "service    | stopped" in stderr
    sub.close()


def test_unreachable_rtsp_camera_does_not_stop_the_others(demo, tmp_path: Path, ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/results.sock"
    sub = RawSubscriber(ctx, endpoint)
    cameras = (f"\n  - id: cam0\n    uri: file://{demo.video}?realtime=0\n"
               f"  - id: rear\n    uri: rtsp://127.0.0.1:{free_port()}/live\n")
    tasks = f"\n  - name: objects\n    type: detector\n    model: {demo.model}\n    cameras: [cam0, rear]\n"
    proc = start(write_config(tmp_path, demo, endpoint, cameras=cameras, tasks=tasks), "--wait-subscriber", "60")
    messages = collect(sub, proc, lambda m: len(m["det.objects.cam0"]) >= 5 and m["sys.event"])
    assert len(messages["det.objects.cam0"]) >= 5
    assert any(e["event"] == "camera.lost" and e["camera"] == "rear" for e in messages["sys.event"])
    assert proc.poll() is None                                   # still running
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    sub.close()


def _fails(config: Path, *expected: str) -> None:
    result = run("run", "--config", str(config), "--max-frames", "1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("edge run: error:") == 1
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_startup_failure_bad_config(tmp_path: Path) -> None:
    (tmp_path / "edge.yaml").write_text("version: 1\ncameras: [{id: a, uri: /dev/video0}]\ntasks: []\n")
    _fails(tmp_path / "edge.yaml", "cameras[0].uri", "has no scheme", "tasks: List should have at least 1 item")


def test_startup_failure_missing_camera_file(demo, tmp_path: Path) -> None:
    config = write_config(tmp_path, demo, f"ipc://{tmp_path}/r.sock",
                          cameras=f"\n  - id: cam0\n    uri: file://{tmp_path}/gone.avi\n",
                          tasks=one_task(demo.model))
    _fails(config, "camera 'cam0': camera file does not exist", "Hint:")


def test_startup_failure_corrupt_model(demo, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage" * 100)
    config = write_config(tmp_path, demo, f"ipc://{tmp_path}/r.sock",
                          tasks=one_task(bad))
    _fails(config, "ONNX Runtime cannot load", str(bad))


def test_startup_failure_endpoint_in_use(demo, tmp_path: Path, ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/results.sock"
    squatter = ctx.socket(zmq.PUB)
    squatter.setsockopt(zmq.LINGER, 0)
    squatter.bind(endpoint)
    _fails(write_config(tmp_path, demo, endpoint),
           f"results endpoint {endpoint} is already in use by a running process", "Hint:")
    squatter.close(linger=0)


def test_subscribe_command_prints_json(demo, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/results.sock"
    config = write_config(tmp_path, demo, endpoint, cameras=f"\n  - id: cam0\n    uri: file://{demo.video}?realtime=0\n",
                          tasks=one_task(demo.model))
    proc = start(config, "--max-frames", "4", "--wait-subscriber", "60")
    result = run("subscribe", "--endpoint", endpoint, "--topic", "det.", "--count", "4", "--json", timeout=120)
    proc.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["seq"] for m in lines] == [0, 1, 2, 3] and lines[0]["topic"] == "det.objects.cam0"
    assert "received 4 message(s), missed 0" in result.stderr


def test_demo_command_with_video(tmp_path: Path, demo) -> None:
    out = tmp_path / "demo.mp4"
    result = run("demo", "--frames", "5", "--endpoint", f"ipc://{tmp_path}/demo.sock", "--save-video", str(out))
    assert result.returncode == 0, result.stderr
    assert "fps" in result.stdout.splitlines()[0] and "processed 5 frames, missed 0" in result.stderr
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_demo_keeps_to_its_own_sockets_beside_a_running_daemon(tmp_path: Path, demo, ctx: zmq.Context) -> None:
    """Issue 16, item 13: the demo bound the default endpoints of `edge run`; beside a running daemon it showed
    that daemon's results as its own for 14 s, then failed. Here real sockets hold both defaults (a publisher
    sending all along, a control socket) while `edge demo` runs without --endpoint and --control."""
    where = ("from edge.config import wire;"
             " print(wire.default_results_endpoint(), wire.default_control_endpoint())")
    defaults = subprocess.run([sys.executable, "-c", where], env=env(), capture_output=True, text=True, timeout=60)
    results, control = defaults.stdout.split()
    Path(results[len("ipc://"):]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    squatter, other_control = ctx.socket(zmq.PUB), ctx.socket(zmq.REP)
    squatter.bind(results)
    other_control.bind(control)
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.05):
            squatter.send_multipart([b"sys.event", msgpack.packb({"v": 1, "kind": "event", "event": "squatter"})])
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        result = run("demo", "--frames", "3")
    finally:
        stop.set()
        thread.join(10)
        squatter.close(linger=0)
        other_control.close(linger=0)
    assert result.returncode == 0, result.stderr
    assert "processed 3 frames, missed 0" in result.stderr and "squatter" not in result.stdout
    said = next(line for line in result.stderr.splitlines() if line.startswith("edge demo: YOLOv3-tiny"))
    assert results not in said and control not in said and "/edge-demo-" in said


def test_subscribe_says_when_nothing_arrives_and_keeps_waiting(tmp_path: Path) -> None:
    import queue
    import subprocess
    import threading

    from tests.support.daemon import ROOT, edge_cmd, env

    endpoint = f"ipc://{tmp_path}/none.sock"
    proc = subprocess.Popen(edge_cmd("subscribe", "--endpoint", endpoint, "--notice-after", "0.3"), cwd=ROOT,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stderr() -> None:                       # lines as they come, then None at end of file
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline, notice = time.monotonic() + 30, None
        while notice is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            assert line is not None, "edge subscribe exited before its notice"
            notice = line if "nothing received from" in line else None
        assert notice is not None, "no 'nothing received' notice within 30 s"
        assert notice.startswith(f"edge subscribe: nothing received from {endpoint} in ")
        assert f"(no socket file {tmp_path}/none.sock)" in notice and "(still waiting)" in notice
        assert proc.poll() is None                                   # it goes on waiting
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    rest = []
    while (line := lines.get_nowait()) is not None:
        rest.append(line)
    assert any("received 0 message(s)" in line for line in rest), rest


def test_sigterm_while_waiting_for_the_first_subscriber_exits_0_at_once(demo, tmp_path: Path) -> None:
    config = write_config(tmp_path, demo, f"ipc://{tmp_path}/r.sock", tasks=one_task(demo.model),
                          cameras=f"\n  - id: cam0\n    uri: file://{demo.video}\n")
    proc = start(config, "--wait-subscriber", "600")
    try:
        for line in proc.stderr:                                    # bounded: the daemon logs this line at start
            if "waiting up to 600.0 s for a first subscriber" in line:
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
        proc.wait()


def test_sighup_reloads_an_unchanged_config_and_the_daemon_keeps_publishing(demo, tmp_path: Path,
                                                                          ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/r.sock"
    sub = RawSubscriber(ctx, endpoint, b"det.")
    config = write_config(tmp_path, demo, endpoint, cameras=f"\n  - id: cam0\n    uri: file://{demo.video}?loop=1\n",
                          tasks=one_task(demo.model))
    proc = start(config, "--wait-subscriber", "60")
    try:
        first = collect(sub, proc, lambda m: len(m["det.objects.cam0"]) >= 1)["det.objects.cam0"][-1]["seq"]
        proc.send_signal(signal.SIGHUP)
        later = collect(sub, proc, lambda m: len(m["det.objects.cam0"]) >= 3)["det.objects.cam0"]
        assert later[-1]["seq"] > first and proc.poll() is None     # still running, still publishing
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
        sub.close()
    assert proc.returncode == 0
    assert "config reloaded: nothing changed" in stderr              # the reload ran, and changed nothing


def test_operators_command_the_running_daemon(demo, tmp_path: Path, ctx: zmq.Context) -> None:
    """`edge status`, `edge precision` and `edge task` against `edge run` (real subprocesses, the demo
    repository with its int8 variant): a pinned precision shows in the next results, a disabled task stops
    publishing and comes back, and the daemon still stops cleanly, removing its control socket."""
    endpoint, control = f"ipc://{tmp_path}/r.sock", f"ipc://{tmp_path}/c.sock"
    config = write_config(tmp_path, demo, endpoint, cameras=f"\n  - id: cam0\n    uri: file://{demo.video}?loop=1\n",
                          tasks=f"\n  - name: objects\n    type: detector\n    engines: {demo.engines}\n"
                                f"    cameras: [cam0]\n")
    sub = RawSubscriber(ctx, endpoint, b"det.")
    proc = start(config, "--control", control, "--telemetry", "none")
    try:
        first = collect(sub, proc, lambda m: len(m["det.objects.cam0"]) >= 2)["det.objects.cam0"]
        assert first and first[0]["precision"] == "fp32"
        status = run("status", "--control", control)
        assert status.returncode == 0, status.stderr
        assert "objects" in status.stdout and "fp32" in status.stdout and "NORMAL" in status.stdout
        state = json.loads(run("status", "--json", "--control", control).stdout)
        assert state["tasks"][0]["unavailable"]["fp16"].startswith("ONNX Runtime on CPU runs FP16 no faster")
        assert run("precision", "objects", "int8", "--control", control).returncode == 0
        pinned = collect(sub, proc, lambda m: any(r["precision"] == "int8" for r in m["det.objects.cam0"]))
        assert pinned["det.objects.cam0"][-1]["engine"] == "yolov3-tiny.int8.qdq.onnx:onnxruntime:int8"
        refused = run("precision", "objects", "fp16", "--control", control)
        assert refused.returncode == 1 and "cannot be pinned to fp16" in refused.stderr
        assert run("task", "disable", "objects", "--control", control).returncode == 0
        assert json.loads(run("status", "--json", "--control", control).stdout)["tasks"] == []
        assert run("task", "enable", "objects", "--control", control).returncode == 0

        def restarted(m: dict[str, list[dict]]) -> bool:        # the camera reopened: its frames count from 0
            frames = [r["frame"] for r in m["det.objects.cam0"]]
            return any(b < a for a, b in zip(frames, frames[1:]))
        again = collect(sub, proc, restarted)["det.objects.cam0"]
        frames = [r["frame"] for r in again]
        first_new = next(b for a, b in zip(again, again[1:]) if b["frame"] < a["frame"])
        assert restarted({"det.objects.cam0": again}), frames
        assert first_new["precision"] == "fp32"                  # a task enabled again starts from its config
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert not (tmp_path / "c.sock").exists()
    sub.close()


def test_demo_shows_a_switch_when_a_trace_heats_up(tmp_path: Path, demo) -> None:
    """The demo's detector runs `precision: auto`: a telemetry trace over the hot threshold from 0.5 s on
    switches it to int8 (after the 2 s confirm time), and the demo prints the event and the new level."""
    trace = tmp_path / "hot.jsonl"
    trace.write_text('{"t": 0, "temps_c": {"tj": 60.0}}\n{"t": 0.5, "temps_c": {"tj": 90.0}}\n')
    result = run("demo", "--frames", "80", "--endpoint", f"ipc://{tmp_path}/demo.sock",
                 "--control", f"ipc://{tmp_path}/control.sock", "--telemetry", f"trace://{trace}")
    assert result.returncode == 0, result.stderr
    switch = next(line for line in result.stdout.splitlines() if line.startswith("event: precision.switch"))
    assert "from=fp32 to=int8" in switch and "tj 90.0 °C ≥ hot 85.0 °C" in switch
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line[:1] == " "]
    assert any("int8" in row and "HOT" in row and "90C" in row for row in rows), result.stdout
