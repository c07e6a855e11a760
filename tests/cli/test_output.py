"""What the `edge` command prints, run as real subprocesses (issue 16): each section names its item."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from edge.wire.publisher import Publisher
from tests.support.assets import seeded_cache
from tests.support.daemon import ROOT, edge_cmd, env, one_task, run, start, write_config

SIGPIPE_STATUS = 141              # 128 + SIGPIPE: what a shell reports for `yes | head`


# ------------------------------------------------------------------------------- a reader that goes (item 14)

def test_a_closed_pipe_ends_any_command_quietly_with_the_sigpipe_status(tmp_path: Path) -> None:
    """`edge bundle list --json | head`: the reader has gone before edge writes (its end of the pipe is closed
    before edge starts), so every write fails with EPIPE. Python's docs (library/signal.rst, "Note on SIGPIPE",
    3.10-3.12) say to catch BrokenPipeError in the entry point and point stdout at /dev/null so that the flush at
    exit does not fail again; the status is a SIGPIPE death's, as the shell reports for coreutils."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(edge_cmd("bundle", "list", "--json", "--root", str(tmp_path / "none")), cwd=ROOT,
                              env=env(), stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (SIGPIPE_STATUS, "")


@pytest.fixture
def ticking(tmp_path: Path, ctx: zmq.Context) -> Iterator[str]:
    """A real publisher on an ipc endpoint sending an event every 20 ms until the test ends."""
    endpoint = f"ipc://{tmp_path}/results.sock"
    publisher = Publisher(endpoint, context=ctx)
    publisher.start()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.02):
            publisher.event("camera.lost", {"camera": "cam0", "reason": "a test tick"})
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join(10)
    publisher.stop(5)


def test_subscribe_into_head_ends_quietly(ticking: str) -> None:
    """`edge subscribe | head -2` in a real shell pipeline: head exits after two lines and edge subscribe, at its
    next line, ends with the SIGPIPE status and no traceback."""
    script = f"{' '.join(edge_cmd('subscribe', '--endpoint', ticking))} | head -2; echo \"status ${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("camera.lost" in line for line in lines[:2]), done.stdout
    assert lines[2] == f"status {SIGPIPE_STATUS}"
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


# --------------------------------------------------------------------------------------- strict JSON (item 28)

HOSTILE = "tj\x1b]0;owned\x07\x1b[2J\u202e"       # a title change, a clear screen, a right-to-left override: item 31e


@pytest.fixture
def older_daemon(tmp_path: Path, ctx: zmq.Context) -> Iterator[str]:
    """A daemon of an older version, on a real REP socket: its status holds the sum of two rails at 1e308 mW
    (inf, which msgpack carries and JSON cannot) and names from telemetry and peers with control characters."""
    endpoint = f"ipc://{tmp_path}/control.sock"
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    status = {"ok": True, "version": "0.0.9", "uptime_s": 3.0, "tasks": [], "lanes": [], "cameras": [],
              "supervisor": None, "peers": {f"connections{HOSTILE}": 1},
              "telemetry": {"source": "trace", "mode": HOSTILE, "gpu_load": None, "temps_c": {HOSTILE: 50.0},
                            "power_mw": {"a": 1e308, "b": 1e308}, "total_mw": float("inf"),
                            "problems": [f"zone {HOSTILE}: offline"]}}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                sock.recv()
                sock.send(msgpack.packb(status))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join(10)
    sock.close(linger=0)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def test_status_json_is_strict_json(older_daemon: str) -> None:
    done = run("status", "--json", "--control", older_daemon)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout, parse_constant=_no_constants)
    assert status["telemetry"]["total_mw"] is None and status["telemetry"]["power_mw"] == {"a": 1e308, "b": 1e308}


# ------------------------------------------------------------------------------ terminal-safe text (item 31e)

def _control_characters(text: str) -> list[str]:
    """Characters of `text` that a terminal would act on (Unicode Cc and Cf), line breaks excepted."""
    return [char for char in text if char != "\n" and unicodedata.category(char) in ("Cc", "Cf")]


def test_status_escapes_control_characters_from_telemetry_and_peers(older_daemon: str) -> None:
    done = run("status", "--control", older_daemon)
    assert done.returncode == 0, done.stderr
    assert _control_characters(done.stdout) == [], done.stdout
    escaped = r"tj\x1b]0;owned\x07\x1b[2J\u202e"
    assert f"temperatures: {escaped} 50.0 °C" in done.stdout
    assert f"power mode {escaped}" in done.stdout and f"problems: zone {escaped}: offline" in done.stdout
    assert f"subscribers: connections{escaped} 1" in done.stdout


def test_status_of_a_real_daemon_escapes_zone_names(demo: Any, tmp_path: Path) -> None:
    """The issue's case end to end: `edge run` on a trace whose zone is named with an escape sequence."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"t": 0, "temps_c": {HOSTILE: 50.0, "tj": 48.0}}) + "\n")
    control = f"ipc://{tmp_path}/c.sock"
    config = write_config(tmp_path, demo, f"ipc://{tmp_path}/r.sock", tasks=one_task(demo.model),
                          cameras=f"\n  - id: cam0\n    uri: file://{demo.video}?loop=1\n")
    proc = start(config, "--control", control, "--telemetry", f"trace://{trace}")
    try:
        deadline, shown = time.monotonic() + 60, ""
        while "temperatures: " not in shown or "temperatures: -" in shown:
            assert time.monotonic() < deadline and proc.poll() is None, shown
            shown = run("status", "--control", control).stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert _control_characters(shown) == [], shown
    assert r"tj\x1b]0;owned\x07\x1b[2J\u202e 50.0 °C" in shown


# --------------------------------------------------------------------------------- each why once (item 18)

def test_status_says_each_why_once() -> None:
    """A refusal the task's reason already gives is not listed again under "cannot run"; others are."""
    from edge.cli.display import status_table

    slow = "ONNX Runtime on CPU runs FP16 no faster than FP32"
    text = status_table({"tasks": [
        {"task": "objects", "precision": "fp32", "reason": f"NORMAL: fp16 refused ({slow}): fp32",
         "unavailable": {"fp16": slow}},
        {"task": "signs", "precision": "fp32", "reason": "NORMAL: pinned fp32", "unavailable": {"int8": "F1 0.35"}}]})
    assert text.count(slow) == 1 and "cannot run int8: F1 0.35" in text


def test_status_shows_each_cameras_outages_and_reconnects() -> None:
    from edge.cli.display import status_table

    text = status_table({"cameras": [{"id": "front", "connected": True, "captured": 1200, "outages": 3,
                                      "reconnects": 2, "missing_frames": 0, "lost_frames": 7}]})
    lines = text.splitlines()
    header = lines.index("cameras") + 1
    assert lines[header].split()[:5] == ["CAMERA", "CONNECTED", "CAPTURED", "OUTAGES", "RECONNECTS"]
    assert lines[header + 1].split() == ["front", "yes", "1200", "3", "2", "0", "7"]
    assert lines[header].split()[-2:] == ["LOST", "FRAMES"]


# --------------------------------------------------------------------------------- without OpenCV (item 19)

@pytest.fixture
def no_opencv(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where `import cv2` fails (the `cv` extra is optional, for Jetson's sake): a
    cv2 module first on the path that raises what Python raises for a missing module."""
    stub = tmp_path / "no-opencv"
    stub.mkdir()
    (stub / "cv2.py").write_text("raise ModuleNotFoundError(\"No module named 'cv2'\", name='cv2')\n")
    return {"PYTHONPATH": f"{stub}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize("command", ["run", "demo", "selftest", "model quantize", "model evaluate"])
def test_without_opencv_every_command_says_what_to_install(command: str, demo: Any, tmp_path: Path,
                                                            no_opencv: dict[str, str]) -> None:
    config = write_config(tmp_path, demo, f"ipc://{tmp_path}/r.sock", tasks=one_task(demo.model))
    args = {"run": ["--config", str(config), "--max-frames", "1"], "demo": ["--frames", "1"], "selftest": [],
            "model quantize": [str(demo.model), str(tmp_path / "q.onnx"), "--calib", str(demo.root / "images")],
            "model evaluate": ["--reference", str(demo.model), "--candidate", str(demo.model), "--data",
                               str(demo.root / "images")]}[command]
    done = run(*command.split(), *args, extra_env=no_opencv)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"edge {command.split()[0]}: error: OpenCV is needed" in done.stderr
    assert "pip install 'edge[cv]'" in done.stderr and "--system-site-packages" in done.stderr


def test_build_needs_no_opencv(demo: Any, no_opencv: dict[str, str]) -> None:
    """A plan build reads ONNX and writes a plan: without OpenCV it goes on to TensorRT (absent here)."""
    done = run("build", str(demo.model), extra_env=no_opencv)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "edge build: error: TensorRT backend requested but `import tensorrt` failed" in done.stderr


def test_without_opencv_a_variant_to_make_is_not_recorded_as_refused(demo: Any, tmp_path: Path,
                                                                     no_opencv: dict[str, str]) -> None:
    """The fp16 variant is checked on frames, which takes OpenCV: its absence is this machine's, not the variant's,
    so nothing is recorded (a refusal would stand until --rebuild) and the fetch says what to install."""
    root = seeded_cache(demo, tmp_path)
    (root / "engines" / "yolov3-tiny" / "yolov3-tiny.fp16.onnx").unlink()
    before = (root / "engines" / "yolov3-tiny" / "manifest.json").read_text()
    done = run("assets", "fetch", "--cache-dir", str(root), extra_env=no_opencv)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "edge assets: error: OpenCV is needed" in done.stderr and "pip install 'edge[cv]'" in done.stderr
    assert (root / "engines" / "yolov3-tiny" / "manifest.json").read_text() == before


@pytest.mark.parametrize("argv", [["status", "--timeout", "inf"], ["status", "--timeout", "0"],
                                  ["reload", "--timeout", "-1"], ["subscribe", "--notice-after", "nan"],
                                  ["run", "--config", "x.yaml", "--wait-subscriber", "1e999"],
                                  ["bundle", "rollback", "--health-timeout", "inf"], ["status", "--timeout", "3e6"],
                                  ["reload", "--timeout", "1e10"]])
def test_a_time_that_is_not_seconds_from_0_to_a_day_is_refused(argv: list[str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`--health-timeout inf` (or nan, or a negative) was taken: the health check would never end, or never wait;
    `--timeout 3e6` overflowed ZeroMQ's poll (milliseconds as a C int) in a traceback."""
    from edge.cli.main import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2 and "must be a number of seconds" in capsys.readouterr().err
