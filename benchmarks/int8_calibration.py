"""INT8 calibration-set selection study: random vs diverse (k-center greedy) at several sizes.

Calibration pool: vtest.avi frames 0-476 (the first 60 % of the video). Held-out set, disjoint:
frames 477-794, every 2nd, plus Darknet's still images (dog, person, horses, kite). Every INT8
variant (ONNX Runtime QDQ, symmetric int8, per-channel weights, the chosen calibration method)
is compared with the fp32 model's detections on the held-out set: F1 at IoU 0.5 (same class,
confidence 0.3) and mAP@0.5 with the fp32 detections as ground truth.

Usage: python benchmarks/int8_calibration.py [--sizes 20 100 300] [--seeds 0 1 2] [--method entropy]
                                            [--exclude NODE ...]
Writes JSON (default benchmarks/results/int8_calibration.json) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.engines.onnxruntime import cpu_facts
from edge.tools import assets, data, evaluate, quantize, select

POOL = range(0, 477)
HELD_OUT = range(477, 795)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="entropy", choices=["entropy", "minmax", "percentile"])
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="nodes kept in float")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_calibration.json"))
    args = parser.parse_args()
    demo = assets.fetch(say=lambda line: None)
    pool, _ = data.load_samples([demo.video], fit_to=(416, 416), frames=POOL)
    held, _ = data.load_samples([demo.video], fit_to=(416, 416), every=2, frames=HELD_OUT)
    stills, _ = data.load_samples([demo.image(n) for n in ("dog.jpg", "person.jpg", "horses.jpg", "kite.jpg")],
                                  fit_to=(416, 416))
    held += stills
    truth, labels = evaluate.reference_detections(demo.model, held, progress=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            runs = [("diverse", 0)] + [("random", seed) for seed in args.seeds]
            for strategy, seed in runs:
                chosen = select.select(pool, size, strategy, seed=seed)
                out = Path(tmp) / f"{strategy}-{size}-{seed}.onnx"
                t0 = time.perf_counter()
                quantize.quantize(demo.model, out, chosen, method=args.method, exclude=args.exclude, progress=False)
                seconds = time.perf_counter() - t0
                report = evaluate.evaluate_against(truth, labels, out, held, progress=False)
                rows.append({"size": size, "strategy": strategy, "seed": seed, "f1": report["f1"],
                             "map50": report["map50"], "precision": report["precision"], "recall": report["recall"],
                             "quantize_s": round(seconds, 1)})
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": cpu_facts(), "method": args.method, "exclude": args.exclude,
                                    "pool": [POOL.start, POOL.stop],
                                    "held_out_frames": len(held), "rows": rows}, indent=2))
    print(f"\nmachine: {cpu_facts()}")
    print(f"held-out: {len(held)} frames ({len(held) - len(stills)} vtest + {len(stills)} stills);"
          f" method {args.method}; excluded: {args.exclude or 'none'}\n")
    print("| N | selection | F1 vs fp32 | mAP@0.5 vs fp32 | recall | precision |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for strategy in ("diverse", "random"):
            group = [r for r in rows if r["size"] == size and r["strategy"] == strategy]
            print(f"| {size} | {strategy}{f' ({len(group)} seeds)' if strategy == 'random' else ''} | "
                  f"{_cell(group, 'f1')} | {_cell(group, 'map50')} | {_cell(group, 'recall')} | "
                  f"{_cell(group, 'precision')} |")
    print(f"\nwrote {args.out}")


def _cell(group: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in group]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (min {min(values):.3f})"


if __name__ == "__main__":
    main()
