"""Run `edge run` as a real subprocess and read its results with a plain pyzmq + msgpack subscriber."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

from edge.config.loader import load_config
from edge.daemon.service import Service

ROOT = Path(__file__).resolve().parents[2]


def edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge", *args]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def start(config: Path, *args: str, preexec_fn: Callable[[], None] | None = None,
          env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(edge_cmd("run", "--config", str(config), *args), cwd=ROOT,
                            env={**env(), **(env_extra or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec_fn)


def run(*args: str, timeout: float = 120, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edge_cmd(*args), cwd=ROOT, env={**env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=timeout)


class RawSubscriber:
    """A subscriber that shares no code with edge: pyzmq SUB + msgpack.unpackb."""

    def __init__(self, ctx: zmq.Context, endpoint: str, topic: bytes = b"") -> None:
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)

    def recv(self, timeout_ms: int) -> tuple[str, dict[str, Any]] | None:
        if not self.socket.poll(timeout_ms):
            return None
        topic, payload = self.socket.recv_multipart()
        return topic.decode(), msgpack.unpackb(payload, raw=False)

    def close(self) -> None:
        self.socket.close(linger=0)


class Running:
    """A Service in this process on a config file (reloads read it again), run in a thread, with a raw
    subscriber on its events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.service = Service(load_config(path, environ={}), load_config=lambda: load_config(path, environ={}))
        self.service.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,))
        self.thread.start()
        self.context = zmq.Context()
        self.events = RawSubscriber(self.context, self.service.publisher.endpoint, b"sys.event")

    def lane(self, task: str) -> Any:
        return self.service._lanes[task][0]

    def event(self, name: str, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.events.recv(100)
            if got is not None and got[1].get("event") == name:
                return got[1]
        raise AssertionError(f"no {name} event within {timeout_s} s")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.service.stop()
        self.events.close()
        self.context.term()


def one_task(model: Path) -> str:
    return f"\n  - name: objects\n    type: detector\n    model: {model}\n    cameras: [cam0]\n"


def write_config(tmp_path: Path, demo, endpoint: str, *, cameras: str | None = None, tasks: str | None = None) -> Path:
    cameras = cameras or f"""
  - id: cam0
    uri: file://{demo.video}?realtime=0
  - id: cam1
    uri: test://bars?size=320x240&realtime=0
  - id: unused
    uri: file:///does/not/exist.avi
"""
    tasks = tasks or f"""
  - name: objects
    type: detector
    model: {demo.model}
    cameras: [cam0, cam1]
    threads: 1
  - name: people
    type: detector
    model: {demo.model}
    cameras: [cam0]
    threads: 1
  - name: idle
    type: detector
    model: {demo.model}
    cameras: [unused]
    enabled: false
"""
    path = tmp_path / "edge.yaml"
    path.write_text(f"version: 1\ncameras:{cameras}tasks:{tasks}output:\n  results: {endpoint}\n  labels: true\n")
    return path
