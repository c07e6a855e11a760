"""Resident memory of the daemon across config reloads that load an engine and are then refused (a task on a camera
file that is missing): each one loads the demo model and unloads it again.

Rows, each in a fresh process so they do not share a heap:
  - floor: the daemon running one task, before any reload, its free heap given back (the least it can hold:
    the physical limit here);
  - baseline: N refused reloads with the heap kept as glibc leaves it (edge's malloc_trim after an unload
    disabled for this row);
  - edge: N refused reloads as edge runs them (TaskRuntime.unload gives the freed heap back).
Reported: RSS after the start and after every 10 reloads (MB), the median of the last three readings, and that
median over the floor. CPU inference; the machine is named.

Usage: python benchmarks/reload_memory.py [--reloads 40] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _config(model: Path, sockets: Path, extra: str = "") -> str:
    return (f"version: 1\ncameras:\n  - id: cam0\n    uri: test://bars?fps=10&size=320x240\n"
            f"  - id: gone\n    uri: file://{sockets}/missing.avi\n"
            f"tasks:\n  - name: a\n    type: detector\n    model: {model}\n    cameras: [cam0]\n    threads: 1\n{extra}"
            f"output:\n  results: ipc://{sockets}/r.sock\ncontrol:\n  endpoint: ipc://{sockets}/c.sock\n"
            f"supervisor:\n  telemetry: none\nlogging:\n  level: error\n")


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(row: str, reloads: int) -> dict[str, Any]:
    """One row, in this process."""
    from edge.config.loader import load_config
    from edge.daemon.service import Service
    from edge.errors import EdgeError
    from edge.pipeline import runtime
    from edge.tools import assets

    if row == "baseline":
        runtime._give_memory_back = lambda: None
    model = assets.fetch(say=lambda line: None).model
    with tempfile.TemporaryDirectory() as tmp:
        sockets = Path(tmp)
        path = sockets / "edge.yaml"
        path.write_text(_config(model, sockets))
        service = Service(load_config(path, environ={}), load_config=lambda: load_config(path, environ={}))
        service.start()
        stop = threading.Event()
        runner = threading.Thread(target=service.run, args=(stop,))
        runner.start()
        if row == "floor":
            runtime._give_memory_back()
        readings = [_rss_mb()]
        if row != "floor":
            path.write_text(_config(model, sockets, f"  - name: b\n    type: detector\n    model: {model}\n"
                                                    "    cameras: [gone]\n    threads: 1\n"))
            for number in range(1, reloads + 1):
                try:
                    service.reload()
                except EdgeError:
                    pass
                if number % 10 == 0:
                    readings.append(_rss_mb())
        stop.set()
        runner.join(30)
        service.stop()
    return {"row": row, "rss_mb": [round(r, 1) for r in readings], "median_last_mb": statistics.median(readings[-3:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reload_memory.json")
    parser.add_argument("--row", help=argparse.SUPPRESS)          # internal: measure one row in this process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(args.row, args.reloads)))
        return
    from edge.engines.onnxruntime import cpu_facts

    rows = []
    for row in ("floor", "baseline", "edge"):
        done = subprocess.run([sys.executable, __file__, "--row", row, "--reloads", str(args.reloads)],
                              capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    floor = rows[0]["median_last_mb"]
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; {args.reloads} refused"
          " reloads, each loading and unloading the demo model")
    print(f"{'row':10} {'RSS MB (start, every 10 reloads)':44} {'median last 3':>13} {'x floor':>8}")
    for row in rows:
        print(f"{row['row']:10} {' '.join(f'{r:.0f}' for r in row['rss_mb']):44} {row['median_last_mb']:13.0f}"
              f" {row['median_last_mb'] / floor:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "reloads": args.reloads, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
