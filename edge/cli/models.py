"""The model tools: the demo assets, the converter, the FP16 and INT8 variants, the accuracy gate and the
TensorRT build."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.cli import display
from edge.cli.common import positive


def cmd_assets_fetch(args: argparse.Namespace) -> int:
    from edge.tools import assets

    result = assets.fetch(args.cache_dir, say=lambda line: print(line, file=sys.stderr, flush=True),
                          rebuild=args.rebuild)
    print(f"demo assets ready in {result.root}")
    return 0


def cmd_darknet2onnx(args: argparse.Namespace) -> int:
    from edge.tools import darknet

    meta = darknet.convert(args.cfg, args.weights, args.names, args.output)
    print(f"wrote {args.output}: {len(meta['anchors'])} YOLO heads, {meta['num_classes']} classes")
    return 0


def _model_input_size(path: Path) -> tuple[int, int]:
    from edge.engines.repository import load_onnx
    from edge.tools.common import input_shape

    shape = input_shape(load_onnx(path))
    return shape[3], shape[2]


def _frames(sources: list[str], model: Path, every: int, what: str, needed: int | None = None) -> list[Any]:
    """Frames for a model tool, resized for `model`'s input; refuses fewer than `needed` (default: all, >= 1)."""
    from edge.tools import data

    samples, report = data.load_samples(sources, fit_to=_model_input_size(model), every=every)
    print(f"{what}: {report.describe()}", file=sys.stderr)
    data.require(samples, report, needed or max(1, len(samples)), what)
    return samples


def _check_output(path: Path | None) -> None:
    """Refuse an unwritable output before any long work (not after an evaluation of many minutes)."""
    from edge.engines.repository import check_writable

    if path is not None:
        check_writable(path)


def cmd_fp16(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.tools import fp16

    _check_output(args.output)
    if args.check:
        images = [s.image for s in _frames(args.check, args.input, args.every, "--check data")[:16]]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    result = fp16.convert(args.input, args.output, check_images=images)
    print(f"wrote {args.output}: max |fp16 - fp32| = {result.max_abs_diff:.4f} over {result.frames} frames"
          f" (outputs up to {result.max_abs_output:.1f}; limit {fp16.MAX_REL_DIFF:.0%} of that)")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from edge.tools import quantize, select

    _check_output(args.output)
    samples = _frames(args.calib, args.input, args.every, "calibration set", needed=args.count)
    chosen = select.select(samples, args.count or len(samples), args.select, seed=args.seed)
    print(f"calibrating on {len(chosen)} frames ({args.select}, {args.method}) ...", file=sys.stderr, flush=True)
    result = quantize.quantize(args.input, args.output, chosen, method=args.method, exclude=args.exclude)
    print(f"wrote {args.output}: INT8 Q/DQ, {result.quantized_nodes} QuantizeLinear nodes, calibrated on"
          f" {result.frames} frames ({args.select}, {args.method}); excluded: {result.excluded or 'none'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edge.tools import evaluate

    _check_output(args.json)
    samples = _frames(args.data, args.reference, args.every, "evaluation set")
    print(f"running the reference and the candidate on {len(samples)} frames ...", file=sys.stderr, flush=True)
    result = evaluate.evaluate(args.reference, args.candidate, samples, conf_threshold=args.conf)
    if args.labels:
        result["coco"] = {"reference": evaluate.coco_map(args.labels, args.reference, samples),
                          "candidate": evaluate.coco_map(args.labels, args.candidate, samples)}
    print(evaluate.format_report(result, reference=args.reference, candidate=args.candidate, min_f1=args.min_f1))
    if args.labels:
        print(f"  COCO labels: reference mAP {result['coco']['reference']['map']} (AP50"
              f" {result['coco']['reference']['map50']}), candidate mAP {result['coco']['candidate']['map']}"
              f" (AP50 {result['coco']['candidate']['map50']})")
    if args.json:
        from edge.engines.repository import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(display.json_text(dict(result, min_f1=args.min_f1), indent=2))
    return 1 if args.min_f1 is not None and result["f1"] < args.min_f1 else 0


def cmd_build(args: argparse.Namespace) -> int:
    from edge.engines.tensorrt import build

    result = build.build(args.onnx, plan_path=args.output, dla_core=args.dla, workspace_mb=args.workspace,
                         timing_cache=args.timing_cache, shapes=args.shapes, profiles=args.profiles,
                         legacy_fp16=args.legacy_fp16)
    print(f"wrote {result.plan} ({result.device.precision}, {result.seconds:.1f} s) and {result.sidecar.name}")
    return 0


def add_assets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    assets = sub.add_parser("assets", help="demo assets").add_subparsers(dest="assets_command", required=True)
    fetch = assets.add_parser("fetch", help="fetch, verify and convert the demo model, video and images")
    fetch.add_argument("--cache-dir", type=Path, help="default $EDGE_CACHE or ~/.cache/edge")
    fetch.add_argument("--rebuild", action="store_true",
                       help="remake the FP16 and INT8 variants (also retries a refused one)")
    fetch.set_defaults(func=cmd_assets_fetch)


def add_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = sub.add_parser("build", help="build a TensorRT plan from an ONNX variant on this device (Jetson)")
    build.add_argument("onnx", type=Path, help="the variant: fp32, fp16 or int8 Q/DQ ONNX")
    build.add_argument("--output", type=Path, help="plan path (default: plans/<name>.<device>.plan beside the ONNX)")
    build.add_argument("--dla", type=int, metavar="N", help="build for DLA core N, with GPU fallback")
    build.add_argument("--workspace", type=positive, default=1024, metavar="MB", help="workspace pool limit")
    build.add_argument("--timing-cache", type=Path, metavar="FILE", help="read and update this timing cache")
    build.add_argument("--shapes", nargs="+", metavar="NAME:SHAPE",
                       help="NAME:1x3x416x416, or NAME:MIN,OPT,MAX for dynamic inputs")
    build.add_argument("--profiles", type=positive, default=1, metavar="N",
                       help="dynamic inputs: N optimization profiles, so N cameras can run the plan at once")
    build.add_argument("--legacy-fp16", action="store_true",
                       help="TensorRT 10.x only: weakly typed network with the FP16 flag (deprecated path)")
    build.set_defaults(func=cmd_build)


def add_model(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = sub.add_parser("model", help="model toolchain").add_subparsers(dest="model_command", required=True)
    d2o = model.add_parser("darknet2onnx", help="convert a Darknet YOLO cfg+weights to ONNX")
    d2o.add_argument("cfg", type=Path)
    d2o.add_argument("weights", type=Path)
    d2o.add_argument("names", type=Path, help="class names file, one per line")
    d2o.add_argument("output", type=Path)
    d2o.set_defaults(func=cmd_darknet2onnx)

    half = model.add_parser("fp16", help="FP16 variant (float32 inputs/outputs kept), checked against fp32")
    half.add_argument("input", type=Path)
    half.add_argument("output", type=Path)
    half.add_argument("--check", nargs="+", metavar="SRC", help="videos/images/folders to compare on"
                      " (default: 4 seeded random images)")
    half.add_argument("--every", type=positive, default=1, help="use every K-th video frame")
    half.set_defaults(func=cmd_fp16)

    quant = model.add_parser("quantize", help="INT8 Q/DQ variant calibrated on your frames")
    quant.add_argument("input", type=Path)
    quant.add_argument("output", type=Path)
    quant.add_argument("--calib", nargs="+", required=True, metavar="SRC", help="videos, images or image folders")
    quant.add_argument("--select", choices=["random", "diverse"], default="diverse",
                       help="how to pick --count frames (default diverse: k-center greedy)")
    quant.add_argument("--count", type=positive, help="calibration frames to use (default: all)")
    quant.add_argument("--method", choices=["entropy", "minmax", "percentile"], default="percentile",
                       help="calibration method (default percentile: best in docs/int8-calibration.md)")
    quant.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="nodes to keep in float")
    quant.add_argument("--seed", type=int, default=0, help="seed of --select random")
    quant.add_argument("--every", type=positive, default=1, help="use every K-th video frame")
    quant.set_defaults(func=cmd_quantize)

    evaluate = model.add_parser("evaluate", help="accuracy gate: candidate detections against a reference")
    evaluate.add_argument("--reference", type=Path, required=True, help="e.g. the fp32 or fp16 variant")
    evaluate.add_argument("--candidate", type=Path, required=True, help="e.g. the int8 variant")
    evaluate.add_argument("--data", nargs="+", required=True, metavar="SRC", help="held-out videos/images/folders")
    evaluate.add_argument("--min-f1", type=float, help="exit 1 when F1 against the reference is below this")
    evaluate.add_argument("--conf", type=float, default=0.3, help="confidence threshold for F1 (default 0.3)")
    evaluate.add_argument("--labels", type=Path, help="COCO-format labels for real mAP (pycocotools)")
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    evaluate.add_argument("--every", type=positive, default=1, help="use every K-th video frame")
    evaluate.set_defaults(func=cmd_evaluate)
