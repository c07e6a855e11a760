"""How far a burst of held connections runs ahead of the connection gate (edge/wire/peers.py).

libzmq accepts a connection in its I/O thread; edge's gate closes the ones over the peer limits a moment
later, in its own thread. Connections accepted but not yet closed hold fds. If a burst fills the fd table
in that moment, libzmq 4.3.5's ipc listener aborts the process on EMFILE. This measures the peak fds of a
bare publisher (one `Publisher` in a subprocess with a fixed `RLIMIT_NOFILE`) while one client opens
connections in a tight loop and holds them. The baseline is the same publisher's fds before the burst,
in the same run. `BURST_FDS` in edge/wire/peers.py is sized from these figures.

Reports per limit and burst size: the fds before, the peak during the burst (median and max over the
repeats), and how many repeats ended the publisher (a signal, e.g. SIGABRT = -6).

Usage: python benchmarks/fd_burst.py [--limit 256 --limit 4096] [--burst 400 ...] [--repeats 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from edge.engines.onnxruntime import cpu_facts

ROOT = Path(__file__).resolve().parents[1]
PUBLISHER = r"""
import logging, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
logging.basicConfig(level=logging.ERROR)
from edge.wire.publisher import Publisher
publisher = Publisher("ipc://" + sys.argv[2])
publisher.start()
print("ready", flush=True)
while True:
    publisher.publish("sys.heartbeat", {"kind": "heartbeat"})
    time.sleep(0.01)
"""
SETTLE_S = 1.5          # after the burst: long enough for the gate to catch up, short of the 2 s handshake limit


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_burst(limit: int, burst: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        path = os.path.join(tmp, "r.sock")
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(limit), path], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        held: list[socket.socket] = []
        try:
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the publisher did not start (exit code {proc.poll()})")
            before = _fds(proc.pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], _fds(proc.pid))
                    except OSError:
                        return

            sampler = threading.Thread(target=sample)
            sampler.start()
            for _ in range(burst):
                sock = socket.socket(socket.AF_UNIX)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    break                       # the publisher is gone
                held.append(sock)
            end = time.monotonic() + SETTLE_S
            while time.monotonic() < end and proc.poll() is None:
                time.sleep(0.01)
            stop.set()
            sampler.join()
            return {"limit": limit, "burst": burst, "held": len(held), "fds_before": before, "fds_peak": peak[0],
                    "exit": proc.poll()}
        finally:
            for sock in held:
                sock.close()
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, action="append", help="RLIMIT_NOFILE of the publisher (repeatable)")
    parser.add_argument("--burst", type=int, action="append", help="connections per burst (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fd_burst.json")
    args = parser.parse_args()
    limits, bursts = args.limit or [256, 4096], args.burst or [400, 800, 3000, 9000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(bursts) + 64
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"a burst of {max(bursts)} needs {need} open files here; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    rows = []
    for limit in limits:
        for burst in bursts:
            runs = [one_burst(limit, burst) for _ in range(args.repeats)]
            rows.append({"limit": limit, "burst": burst, "runs": runs,
                         "fds_before": statistics.median(r["fds_before"] for r in runs),
                         "fds_peak_median": statistics.median(r["fds_peak"] for r in runs),
                         "fds_peak_max": max(r["fds_peak"] for r in runs),
                         "ended": sum(r["exit"] is not None for r in runs)})
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
               "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, libzmq {machine['libzmq']}")
    print(f"{'limit':>6}{'burst':>7}{'fds before':>12}{'peak median':>13}{'peak max':>10}{'ended':>7}")
    for row in rows:
        print(f"{row['limit']:>6}{row['burst']:>7}{row['fds_before']:>12}{row['fds_peak_median']:>13}"
              f"{row['fds_peak_max']:>10}{row['ended']:>5}/{args.repeats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "settle_s": SETTLE_S, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
