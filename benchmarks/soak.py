"""Soak under hostile clients: the daemon (`edge run`, subprocess) on the looping demo video, 20 good
subscribers, connection churn and periodic garbage clients; the baseline is the same daemon without
attackers, in the same run, before them.

Phases: `--baseline` seconds of 20 subscribers alone, then `--minutes` of the same plus attackers:
  - churn: a subscriber connects, takes one message and leaves, 20 times a second;
  - every 5 s one garbage burst, taking turns: 500 connections of 4 KiB random bytes; 50 XSUB peers
    sending 100 subscriptions each, junk among them; 300 idle connections held for 2 s; 300 ZMTP
    greetings followed by junk.

Reports: detection fps (median of heartbeats) per phase and their ratio; the daemon's RSS at the
start and end of the attack phase and its slope (least squares, MB per minute); gaps in `seq` seen
by the good subscribers (every one is counted: a good subscriber reads all the time, so any gap is
unexplained); heartbeats received by the good subscribers; connections refused and messages rejected.

Usage: python benchmarks/soak.py [--minutes 10] [--baseline 60] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from edge.engines.onnxruntime import cpu_facts
from edge.tools import assets

ROOT = Path(__file__).resolve().parents[1]
GOOD = 20
GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32


class Good:
    """GOOD subscribers to every topic in one poller thread; counts messages and seq gaps per socket."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.socks = []
        for _ in range(GOOD):
            sock = self.ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self.socks.append(sock)
        self.last: list[dict[str, int]] = [{} for _ in self.socks]
        self.gaps = 0
        self.received = 0
        self.heartbeats: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while not self.stop.is_set():
            for sock, _ in poller.poll(200):
                i = self.socks.index(sock)
                topic, payload = sock.recv_multipart()
                message = msgpack.unpackb(payload)
                last = self.last[i].get(topic.decode())
                if last is not None and message["seq"] != last + 1:
                    self.gaps += message["seq"] - last - 1
                self.last[i][topic.decode()] = message["seq"]
                self.received += 1
                if i == 0 and topic == b"sys.heartbeat":
                    self.heartbeats.append((time.monotonic(), message))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.ctx.destroy(linger=0)


def _churn(endpoint: str, stop: threading.Event) -> None:
    ctx = zmq.Context()
    while not stop.is_set():
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"sys.")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.poll(1000)
        sock.close(linger=0)
        stop.wait(0.05)
    ctx.destroy(linger=0)


def _unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(2)
    sock.connect(path)
    return sock


def _raw(path: str, count: int, payload: bytes | None) -> None:
    for _ in range(count):
        try:
            with _unix(path) as sock:
                sock.sendall(payload if payload is not None else os.urandom(4096))
        except OSError:
            pass


def _subscription_junk(endpoint: str) -> None:
    ctx = zmq.Context()
    for n in range(50):
        peer = ctx.socket(zmq.XSUB)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(endpoint)
        for i in range(100):
            peer.send(b"\x01det.soak%d.%d" % (n, i) if i % 10 else b"\x01" + os.urandom(60))
        peer.close(linger=200)
    ctx.destroy(linger=0)


def _idle(path: str) -> None:
    held = []
    for _ in range(300):
        try:
            held.append(_unix(path))
        except OSError:
            pass
    time.sleep(2)
    for sock in held:
        sock.close()


def _garbage(endpoint: str, path: str, stop: threading.Event) -> None:
    bursts = [lambda: _raw(path, 500, None), lambda: _subscription_junk(endpoint), lambda: _idle(path),
              lambda: _raw(path, 300, GREETING + os.urandom(512))]
    turn = 0
    while not stop.wait(5):
        bursts[turn % len(bursts)]()
        turn += 1


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB per minute."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def _phase(good: Good, proc: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    start, gaps, received = time.monotonic(), good.gaps, good.received
    rss: list[tuple[float, float]] = []
    while time.monotonic() - start < seconds and proc.poll() is None:
        rss.append((time.monotonic() - start, _rss_mb(proc.pid)))
        time.sleep(1)
    beats = [m for t, m in good.heartbeats if t >= start]
    fps = [m["lanes"][0]["fps"] for m in beats if m["lanes"]]
    return {"seconds": round(time.monotonic() - start, 1), "fps_median": statistics.median(fps) if fps else 0.0,
            "heartbeats": len(beats), "gaps": good.gaps - gaps, "received": good.received - received,
            "rss_start_mb": round(rss[0][1], 1), "rss_end_mb": round(rss[-1][1], 1),
            "rss_slope_mb_per_min": round(_slope(rss[len(rss) // 10:]), 3),
            "refused_connections": beats[-1]["refused_connections"] if beats else None,
            "rejected_inbound": beats[-1]["rejected_inbound"] if beats else None,
            "max_heartbeat_gap_s": round(max((b - a for (a, _), (b, _) in
                                              zip(good.heartbeats, good.heartbeats[1:]) if a >= start), default=0), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--baseline", type=float, default=60.0, help="seconds without attackers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = parser.parse_args()
    demo = assets.fetch(say=lambda line: None)
    tmp = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    os.chmod(tmp, 0o700)
    endpoint, path = f"ipc://{tmp}/r.sock", str(tmp / "r.sock")
    config = tmp / "edge.yaml"
    config.write_text(f"version: 1\ncameras:\n  - id: cam0\n    uri: file://{demo.video}?loop=1&realtime=0\n"
                      f"tasks:\n  - name: objects\n    type: detector\n    model: {demo.model}\n    cameras: [cam0]\n"
                      f"output:\n  results: {endpoint}\n  heartbeat_hz: 1\ncontrol:\n  endpoint: ipc://{tmp}/c.sock\n")
    log = (tmp / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    good = Good(endpoint)
    stop = threading.Event()
    try:
        while not good.heartbeats and proc.poll() is None:
            time.sleep(0.2)
        baseline = _phase(good, proc, args.baseline)
        attackers = [threading.Thread(target=_churn, args=(endpoint, stop), daemon=True),
                     threading.Thread(target=_garbage, args=(endpoint, path, stop), daemon=True)]
        for thread in attackers:
            thread.start()
        attacked = _phase(good, proc, args.minutes * 60)
        stop.set()
        for thread in attackers:
            thread.join(30)
        after = _phase(good, proc, 10)
    finally:
        good.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    tail = (tmp / "daemon.log").read_text().splitlines()[-5:]
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
               "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    result = {"machine": machine, "good_subscribers": GOOD, "baseline": baseline, "attacked": attacked,
              "after": after, "fps_ratio": round(attacked["fps_median"] / baseline["fps_median"], 3)
              if baseline["fps_median"] else None, "exit_code": code, "daemon_log_tail": tail}
    print(f"machine: {machine['cpu']} ({'VNNI' if machine.get('vnni') else 'no VNNI'}), {machine['cores']} cores,"
          f" libzmq {machine['libzmq']}")
    print(f"{'phase':<10}{'s':>7}{'fps':>8}{'gaps':>6}{'recv':>9}{'beats':>7}{'maxgap s':>10}{'RSS MB':>15}"
          f"{'MB/min':>9}{'refused':>9}{'rejected':>9}")
    for name, row in (("baseline", baseline), ("attacked", attacked), ("after", after)):
        print(f"{name:<10}{row['seconds']:>7}{row['fps_median']:>8.1f}{row['gaps']:>6}{row['received']:>9}"
              f"{row['heartbeats']:>7}{row['max_heartbeat_gap_s']:>10}"
              f"{row['rss_start_mb']:>7}->{row['rss_end_mb']:<7}{row['rss_slope_mb_per_min']:>9}"
              f"{row['refused_connections']!s:>9}{row['rejected_inbound']!s:>9}")
    print(f"fps attacked / baseline: {result['fps_ratio']}; daemon exit code {code}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
