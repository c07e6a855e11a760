"""`edge demo`: the daemon on the demo video in a background thread, a subscriber in the foreground
printing a per-second table, optionally an annotated MP4."""
from __future__ import annotations

import collections
import os
import signal
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from edge import opencv
from edge.cli.display import format_ms, printable
from edge.config.loader import parse_config
from edge.config.schema import Config
from edge.daemon.service import Service
from edge.errors import EdgeError
from edge.tools import assets
from edge.wire.client import Message, Subscriber

SUBSCRIBER_WAIT_S = 10.0


def demo_config(cache: Path, *, endpoint: str, control: str) -> Config:
    text = resources.files("edge").joinpath("data/demo.yaml").read_text(encoding="utf-8")
    environ = dict(os.environ, EDGE_CACHE=str(cache), EDGE_RESULTS_ENDPOINT=endpoint, EDGE_CONTROL_ENDPOINT=control)
    return parse_config(text, source="edge/data/demo.yaml", base_dir=cache, environ=environ)


class _Annotator:
    """Reads the demo video alongside the results and draws each frame's detections."""

    def __init__(self, video: Path, out: Path) -> None:
        cv2 = opencv.import_cv2()
        self._cv2 = cv2
        opencv.route_media_logs(cv2)
        self._capture = cv2.VideoCapture(str(video))
        fps = self._capture.get(cv2.CAP_PROP_FPS) or 10.0
        size = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise EdgeError(f"cannot write video {out}", hint="check that the directory exists and is writable")
        self._index = -1
        self.written = 0

    def draw(self, payload: dict[str, Any]) -> None:
        image = None
        while self._index < payload["frame"]:
            ok, image = self._capture.read()
            if not ok:
                return
            self._index += 1
        if image is None:
            return
        names = payload.get("labels") or [str(d[5]) for d in payload["detections"]]
        for (x1, y1, x2, y2, score, _), name in zip(payload["detections"], names):
            self._cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 255), 2)
            self._cv2.putText(image, f"{name} {score:.2f}", (int(x1), max(12, int(y1) - 4)),
                              self._cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 255), 1)
        self._writer.write(image)
        self.written += 1

    def close(self) -> None:
        self._writer.release()
        self._capture.release()


class _Table:
    HEADER = (f"{'time s':>7} {'fps':>6} {'lat p50':>8} {'lat p99':>8} {'drops':>6} {'frames':>6} {'det/frame':>9}"
              f" {'prec':>5} {'level':>8} {'temp':>6}  top classes")

    def __init__(self) -> None:
        self.frames = 0
        self.detections = 0
        self.classes: collections.Counter[str] = collections.Counter()
        self.total_frames = 0
        self.hottest = "-"
        print(self.HEADER, flush=True)

    def telemetry(self, payload: dict[str, Any]) -> None:
        temps = payload["temps_c"]
        self.hottest = f"{max(temps.values()):.0f}C" if temps else "-"

    def det(self, payload: dict[str, Any]) -> None:
        self.frames += 1
        self.total_frames += 1
        self.detections += len(payload["detections"])
        self.classes.update(payload.get("labels") or [str(d[5]) for d in payload["detections"]])

    def heartbeat(self, payload: dict[str, Any]) -> None:
        if not payload["lanes"]:
            return
        lane = payload["lanes"][0]
        per_frame = self.detections / self.frames if self.frames else 0.0
        top = ", ".join(f"{name} {count}" for name, count in self.classes.most_common(3))
        drops = lane["dropped_camera"] + lane["dropped_publisher"]
        level = (payload.get("supervisor") or {}).get("level", "off")
        print(f"{payload['uptime_s']:7.1f} {lane['fps']:6.1f} {format_ms(lane['latency_ms_p50']):>8} "
              f"{format_ms(lane['latency_ms_p99']):>8} {drops:6d} {self.frames:6d} {per_frame:9.1f}"
              f" {lane['precision']:>5} {level:>8} {self.hottest:>6}  {top}", flush=True)
        self.frames, self.detections = 0, 0
        self.classes.clear()


def run_demo(*, frames: int | None, endpoint: str | None, control: str | None, save_video: Path | None) -> int:
    """The demo. Its results and control sockets are its own (in a private temporary directory) unless `endpoint`
    or `control` name others: its subscriber must hear its daemon alone, and a daemon or another demo already
    running keeps its sockets."""
    demo = assets.fetch(say=lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as private:
        config = demo_config(demo.root, endpoint=endpoint or f"ipc://{private}/results.sock",
                             control=control or f"ipc://{private}/control.sock")
        return _run(demo, config, frames, save_video)


def _run(demo: assets.DemoAssets, config: Config, frames: int | None, save_video: Path | None) -> int:
    service = Service(config, max_frames=frames, wait_subscriber_s=SUBSCRIBER_WAIT_S)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=_serve, args=(service, stop, outcome), name="demo-service", daemon=True)
    annotator = _Annotator(demo.video, save_video) if save_video else None
    print(f"edge demo: YOLOv3-tiny on {demo.video.name} (PETS 2009, University of Reading), "
          f"results on {config.output.results}, control socket {config.control.endpoint}", file=sys.stderr)
    with Subscriber(config.output.results, topics=["det.", "sys."]) as sub:
        thread.start()
        table = _Table()
        while True:
            alive = thread.is_alive()
            msg = sub.recv(timeout=0.2)
            if msg is not None:
                _show(msg, table, annotator)
            elif not alive:
                break
        thread.join()
    if annotator:
        annotator.close()
        print(f"wrote {annotator.written} annotated frames to {save_video}", file=sys.stderr)
    if "error" in outcome:
        raise outcome["error"]
    print(f"processed {table.total_frames} frames, missed {sub.missed} messages", file=sys.stderr)
    return outcome.get("code", 1)


def _serve(service: Service, stop: threading.Event, outcome: dict[str, Any]) -> None:
    try:
        service.start()
        try:
            outcome["code"] = service.run(stop)
        finally:
            service.stop()
    except EdgeError as exc:
        outcome["error"] = exc


def _show(msg: Message, table: _Table, annotator: _Annotator | None) -> None:
    kind = msg.payload["kind"]
    if kind == "det":
        table.det(msg.payload)
        if annotator:
            annotator.draw(msg.payload)
    elif kind == "heartbeat":
        table.heartbeat(msg.payload)
    elif kind == "telemetry":
        table.telemetry(msg.payload)
    else:
        details = " ".join(f"{k}={v}" for k, v in msg.payload.items()
                           if k not in ("v", "kind", "event", "seq", "t_publish_ns", "t_wall_ns"))
        print(printable(f"event: {msg.payload.get('event')} {details}"), flush=True)
