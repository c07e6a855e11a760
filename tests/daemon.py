"""Run `edge run` as a real subprocess and read its results with a plain pyzmq + msgpack subscriber."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[1]


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
