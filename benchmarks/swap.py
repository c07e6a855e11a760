"""Hot swap under load: the daemon's pipeline (Service, in-process) on the demo video at full speed
(lossless: every frame), switching the task between its fp32 and int8 variants every `--every` seconds.
The baselines run first, in the same run: the same pipeline pinned to fp32, then pinned to int8, without
switches. INT8 is faster than fp32 on a CPU with VNNI, so the switching run is compared with the
time-weighted mix of the two (the share of time each variant was active), not with either alone.

Reports per phase: results per second, frames lost (gaps in `frame` or `seq` at the subscriber) and
duplicates; for the switches:
  - decision -> first result on the new variant (p50/p99), next to the in-flight depth K: a frame that
    was already in flight at the decision finishes on the old variant, so this includes up to K frames;
  - the gap between the last result on the old variant and the first on the new one, against the median
    gap between any two results: a swap that stalls the lane shows up as a longer gap.
The machine is named (CPU, cores): ONNX Runtime's kernels differ by CPU, and this is CPU inference.

Usage: python benchmarks/swap.py [--seconds 60] [--every 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.engines.onnxruntime import cpu_facts
from edge.tools import assets
from edge.wire.client import Subscriber

ROOT = Path(__file__).resolve().parents[1]


def _config(root: Path, sockets: str, precision: str) -> str:
    return f"""version: 1
cameras:
  - id: cam0
    uri: file://{root}/media/vtest.avi?realtime=0&loop=1
tasks:
  - name: objects
    type: detector
    engines: {root}/engines/yolov3-tiny
    precision: {precision}
    cameras: [cam0]
output:
  results: ipc://{sockets}/results.sock
  queue_size: 1000
control:
  endpoint: ipc://{sockets}/control.sock
supervisor:
  enabled: false
logging:
  level: warning
"""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(root: Path, seconds: float, every: float | None, precision: str) -> dict[str, Any]:
    """One run of the pipeline starting on `precision`; with `every`, a switch fp32 <-> int8 each `every` s."""
    with tempfile.TemporaryDirectory() as sockets:
        os.chmod(sockets, 0o700)
        config = parse_config(_config(root, sockets, precision), source="swap benchmark", base_dir=root, environ={})
        service = Service(config, wait_subscriber_s=30)
        sub = Subscriber(config.output.results, topics=["det."])
        received: list[tuple[int, int, str, int]] = []       # (frame, seq, precision, t_publish_ns)
        decisions: list[tuple[int, str]] = []                # (t_ns, precision switched to)
        done = threading.Event()

        def consume() -> None:
            while not done.is_set():
                msg = sub.recv(timeout=0.1)
                if msg is not None:
                    p = msg.payload
                    received.append((p["frame"], p["seq"], p["precision"], p["t_publish_ns"]))
        reader = threading.Thread(target=consume)
        reader.start()
        service.start()
        runner = threading.Thread(target=service.run, args=(done,))
        runner.start()
        task = service.tasks["objects"]
        start = time.monotonic()
        next_switch = start + (every or seconds + 1)
        active_s = {"fp32": 0.0, "int8": 0.0}
        since = start
        while time.monotonic() - start < seconds:
            time.sleep(min(0.01, max(0.0, next_switch - time.monotonic())))
            if every and time.monotonic() >= next_switch:
                target = "int8" if task.precision == "fp32" else "fp32"
                active_s[task.precision] += time.monotonic() - since
                since = time.monotonic()
                decisions.append((time.monotonic_ns(), target))
                task.choose(target, "benchmark")
                next_switch += every
        active_s[task.precision] += time.monotonic() - since
        done.set()
        runner.join(30)
        service.stop()
        reader.join()
        sub.close()
    return {**_report(received, decisions, seconds, service_k=config.tasks[0].in_flight),
            "active_s": {p: round(v, 2) for p, v in active_s.items()}}


def _report(received: list[tuple[int, int, str, int]], decisions: list[tuple[int, str]], seconds: float,
            service_k: int) -> dict[str, Any]:
    frames = [r[0] for r in received]
    seqs = [r[1] for r in received]
    lost = sum(max(0, b - a - 1) for a, b in zip(frames, frames[1:]) if b > a)   # the looping video restarts at 0
    seq_gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    duplicates = sum(1 for a, b in zip(frames, frames[1:]) if b == a)
    gaps_ms = [(b[3] - a[3]) / 1e6 for a, b in zip(received, received[1:])]
    to_first, swap_gaps = [], []
    for t_ns, target in decisions:
        index = next((i for i, r in enumerate(received) if r[3] >= t_ns and r[2] == target), None)
        if index is None:
            continue
        to_first.append((received[index][3] - t_ns) / 1e6)
        if index > 0:
            swap_gaps.append((received[index][3] - received[index - 1][3]) / 1e6)
    return {"seconds": seconds, "results": len(received), "fps": len(received) / seconds, "frames_lost": lost,
            "seq_gaps": seq_gaps, "duplicates": duplicates, "switches": len(decisions),
            "switches_seen": len(to_first), "in_flight_k": service_k,
            "median_gap_ms": statistics.median(gaps_ms) if gaps_ms else None,
            "decision_to_first_new_ms_p50": _percentile(to_first, 0.5),
            "decision_to_first_new_ms_p99": _percentile(to_first, 0.99),
            "swap_gap_ms_p50": _percentile(swap_gaps, 0.5), "swap_gap_ms_p99": _percentile(swap_gaps, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "swap.json")
    args = parser.parse_args()
    demo = assets.fetch(say=lambda line: None)
    fp32 = phase(demo.root, args.seconds, None, "fp32")
    int8 = phase(demo.root, args.seconds, None, "int8")
    switching = phase(demo.root, args.seconds, args.every, "fp32")
    machine = {**cpu_facts(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    share = switching["active_s"]
    expected = (share["fp32"] * fp32["fps"] + share["int8"] * int8["fps"]) / max(1e-9, sum(share.values()))
    ratio = switching["fps"] / expected
    print(f"machine: {machine['cpu']} ({'VNNI' if machine.get('vnni') else 'no VNNI'}), {machine['cores']} cores")
    print(f"{'phase':<10}{'fps':>7}{'lost':>6}{'dup':>5}{'seq gaps':>10}{'switches':>10}{'gap ms':>8}"
          f"{'to new p50/p99 ms':>19}{'swap gap p50/p99 ms':>21}")
    for name, row in (("fp32", fp32), ("int8", int8), ("switching", switching)):
        print(f"{name:<10}{row['fps']:>7.1f}{row['frames_lost']:>6}{row['duplicates']:>5}{row['seq_gaps']:>10}"
              f"{row['switches_seen']:>10}{_ms(row['median_gap_ms']):>8}"
              f"{_ms(row['decision_to_first_new_ms_p50']) + '/' + _ms(row['decision_to_first_new_ms_p99']):>19}"
              f"{_ms(row['swap_gap_ms_p50']) + '/' + _ms(row['swap_gap_ms_p99']):>21}")
    print(f"time on each variant while switching: fp32 {share['fp32']:.1f} s, int8 {share['int8']:.1f} s;"
          f" expected {expected:.1f} results/s from the baselines")
    print(f"throughput switching / time-weighted baselines: {ratio:.3f}; K = {switching['in_flight_k']} frames"
          " in flight")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "every_s": args.every, "fp32": fp32, "int8": int8,
                                    "switching": switching, "expected_fps": expected, "fps_ratio": ratio},
                                   indent=2))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
