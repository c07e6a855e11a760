"""The `edge` command: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import __version__
from edge.cli import display
from edge.errors import EdgeError
from edge.log import LEVELS, get_logger, setup_logging

log = get_logger("cli")


def cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _on_signals(stop.set)                         # before anything that takes time (imports, the config)
    from edge.config import load_config
    from edge.daemon.service import Service

    environ = {**os.environ, **_env_overrides(args)}
    config = load_config(args.config, environ=environ)
    setup_logging(args.log_level or config.logging.level)
    if stop.is_set():
        return 0
    service = Service(config, max_frames=args.max_frames, wait_subscriber_s=args.wait_subscriber,
                      load_config=lambda: load_config(args.config, environ=environ), reload_requested=args.reloads)
    service.start(stop)
    try:
        return service.run(stop)
    finally:
        service.stop()


def _env_overrides(args: argparse.Namespace) -> dict[str, str]:
    """--control, --telemetry and --metrics of `run` and `demo`, as the config's environment overrides."""
    given = {"EDGE_CONTROL_ENDPOINT": args.control, "EDGE_TELEMETRY": args.telemetry,
             "EDGE_METRICS_LISTEN": args.metrics}
    return {name: value for name, value in given.items() if value}


def _on_signals(handler: Callable[[], None]) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        handler()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def cmd_subscribe(args: argparse.Namespace) -> int:
    from edge.wire.client import CurveKeys, SilenceNotice, Subscriber

    curve = CurveKeys.load(Path(args.curve[0]), Path(args.curve[1])) if args.curve else None
    stop = threading.Event()
    _on_signals(lambda: stop.set())
    received = 0
    with Subscriber(args.endpoint, topics=args.topic or [""], curve=curve) as sub:
        print(f"subscribed to {sub.endpoint} topics {args.topic or ['(all)']}", file=sys.stderr, flush=True)
        silence = SilenceNotice(sub.endpoint, args.topic or [""], after_s=args.notice_after, curve=curve is not None)
        while not stop.is_set() and (args.count is None or received < args.count):
            msg = sub.recv(timeout=0.2)
            if msg is None:
                notice = silence.due(invalid=sub.invalid)
                if notice:
                    print(f"edge subscribe: {notice}", file=sys.stderr, flush=True)
                continue
            silence.heard()
            received += 1
            print(display.json_text({"topic": msg.topic, **msg.payload}) if args.json
                  else display.summary(msg.topic, msg.payload), flush=True)
        print(f"received {received} message(s), missed {sub.missed} (seq gaps), invalid {sub.invalid}",
              file=sys.stderr)
    return 0


def cmd_curve_keys(args: argparse.Namespace) -> int:
    import zmq.auth

    if not args.directory.is_dir():
        raise EdgeError(f"no directory {args.directory}", hint="create it first (mode 0700 for a secret key)")
    for suffix in (".key", ".key_secret"):
        if (args.directory / f"{args.name}{suffix}").exists():
            raise EdgeError(f"{args.directory / (args.name + suffix)} exists; keys are never overwritten",
                            hint="choose another name, or remove the old pair on purpose")
    public, secret = zmq.auth.create_certificates(str(args.directory), args.name)
    os.chmod(secret, 0o600)
    print(f"wrote {public} (public: give it to the other side) and {secret} (secret, mode 0600: keep it here)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.cli.demo import run_demo

    setup_logging(args.log_level or "warning")
    os.environ.update(_env_overrides(args))       # demo_config reads the overrides from the environment
    return run_demo(frames=args.frames, endpoint=args.endpoint, control=args.control, save_video=args.save_video)


def _control(args: argparse.Namespace) -> str:
    from edge.wire import protocol

    return args.control or os.environ.get("EDGE_CONTROL_ENDPOINT") or protocol.default_control_endpoint()


def cmd_status(args: argparse.Namespace) -> int:
    from edge.wire import control

    status = control.request(_control(args), "status", timeout_s=args.timeout)
    print(display.json_text(status, indent=2, ensure_ascii=False, default=str) if args.json
          else display.status_table(status))
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    from edge.wire import control

    control.request(_control(args), f"task.{args.action}", timeout_s=args.timeout, task=args.name)
    print(f"task {args.name}: {args.action}d")
    return 0


def cmd_precision(args: argparse.Namespace) -> int:
    from edge.wire import control

    control.request(_control(args), "precision.set", timeout_s=args.timeout, task=args.task, mode=args.mode)
    print(f"task {args.task}: precision {args.mode}" + (" (the supervisor chooses)" if args.mode == "auto" else ""))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from edge.wire import control

    result = control.request(_control(args), "reload", timeout_s=args.timeout)
    print(f"config reloaded: {result.get('changes', 'nothing changed')}")
    return 0


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
    from edge.tools.common import input_shape, load_onnx

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
    from edge.tools.common import check_writable

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
        from edge.tools.common import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(display.json_text(dict(result, min_f1=args.min_f1), indent=2))
    return 1 if args.min_f1 is not None and result["f1"] < args.min_f1 else 0


def cmd_build(args: argparse.Namespace) -> int:
    from edge.tools import build

    result = build.build(args.onnx, plan_path=args.output, dla_core=args.dla, workspace_mb=args.workspace,
                         timing_cache=args.timing_cache, shapes=args.shapes, profiles=args.profiles,
                         legacy_fp16=args.legacy_fp16)
    print(f"wrote {result.plan} ({result.device.precision}, {result.seconds:.1f} s) and {result.sidecar.name}")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from edge.cli import selftest

    require = args.require_tensorrt or selftest.on_jetson()
    checks = selftest.run_selftest(require_tensorrt=require, precision=args.precision)
    failed = [c.name for c in checks if c.status == selftest.FAIL]
    print(f"selftest: {len(checks) - len(failed)} of {len(checks)} checks passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edge.deploy import keys

    pair = keys.generate(args.out, args.name)
    print(f"wrote {pair.private} (the private key, 0600: keep it off the vehicles) and {pair.public} (install it in"
          f" {keys.TRUSTED_KEYS}/ on each device); key id {pair.key_id}")
    return 0


def cmd_bundle_pack(args: argparse.Namespace) -> int:
    from edge.deploy import archive

    verified = archive.pack(args.models, key=args.key, version=args.version, out=args.out)
    manifest = verified.manifest
    print(f"wrote {args.out}: bundle {manifest.version}, models {', '.join(manifest.models)}, {len(manifest.files)}"
          f" files, {manifest.total_bytes} bytes, signed by key {verified.key_id}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from edge.deploy import install

    verified = install.verify(_bundle_source(args.bundle), trusted_dir=args.keys)
    manifest = verified.manifest
    plans = sorted({f"{k.get('board')} L4T {k.get('l4t')}" for k in manifest.device_keys})
    print(f"{args.bundle}: bundle {manifest.version} created {manifest.created}, signed by trusted key"
          f" {verified.key_id}; models {', '.join(manifest.models)}; {len(manifest.files)} files,"
          f" {manifest.total_bytes} bytes, every sha256 matches; plans for: {', '.join(plans) or 'none'}")
    return 0


def cmd_bundle_install(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.install(_bundle_source(args.bundle), root=args.root, trusted_dir=args.keys,
                              activation=_activation(args))
    _print_outcome("installed", outcome)
    return 0


def cmd_bundle_activate(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.activate(args.slot, root=args.root, trusted_dir=args.keys, activation=_activation(args),
                               force=args.force)
    _print_outcome("activated", outcome)
    return 0


def cmd_bundle_rollback(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.rollback(root=args.root, trusted_dir=args.keys, activation=_activation(args), force=args.force)
    _print_outcome("rolled back to", outcome)
    return 0


def cmd_bundle_list(args: argparse.Namespace) -> int:
    from edge.deploy import install

    listing = install.list_slots(args.root)
    print(display.json_text(listing, indent=2) if args.json else install.describe(listing))
    return 0


def _bundle_source(name: str) -> Any:
    """A bundle argument: a path, or - for standard input (a pipe over ssh)."""
    return sys.stdin.buffer if name == "-" else Path(name)


def _activation(args: argparse.Namespace) -> Any:
    """What follows a switch of `current`. A hangup (a closed terminal, a dropped ssh -t) ends the command like
    SIGTERM does, through the switch back, not in the middle of it."""
    from edge.deploy import health, install

    signal.signal(signal.SIGHUP, _terminated)
    check = None if args.no_health else health.HealthCheck(_control(args), timeout_s=args.health_timeout)
    return install.Activation(restart=install.RESTART if args.restart else None, health=check)


def _print_outcome(done: str, outcome: Any) -> None:
    print(f"{done} bundle {outcome.version} (key {outcome.key_id}) in slot {outcome.slot}; current -> {outcome.slot}"
          f" (was {outcome.previous or 'none'})")
    print(f"health: {outcome.health}")
    for note in outcome.notes:
        print(f"note: {note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="Perception runtime for NVIDIA Jetson in vehicles.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon with a config file")
    run.add_argument("--config", required=True, type=Path, help="YAML config file")
    run.add_argument("--max-frames", type=_positive, help="exit 0 after N frames per lane")
    run.add_argument("--wait-subscriber", type=_seconds, default=0.0, metavar="SECONDS",
                     help="before starting cameras, wait up to SECONDS for a first subscriber (tests, demos)")
    run.add_argument("--log-level", choices=LEVELS, help="override logging.level")
    _daemon_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the demo: YOLOv3-tiny on vtest.avi, results on ZeroMQ, live table")
    demo.add_argument("--frames", type=_positive, help="stop after N frames (default: the whole video, 795)")
    demo.add_argument("--endpoint", help="results endpoint (default: a socket of this demo's own; it prints it)")
    demo.add_argument("--save-video", type=Path, metavar="PATH", help="write an annotated MP4")
    demo.add_argument("--log-level", choices=LEVELS)
    _daemon_args(demo)
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="the running daemon's state: tasks, lanes, cameras, supervisor, telemetry")
    status.add_argument("--json", action="store_true", help="the control socket's status reply as JSON")
    _control_args(status, timeout=5.0)
    status.set_defaults(func=cmd_status)

    task = sub.add_parser("task", help="enable or disable a task of the running daemon (its cameras follow)")
    task.add_argument("action", choices=["enable", "disable"])
    task.add_argument("name", metavar="NAME", help="the task's name in the config")
    _control_args(task, timeout=30.0)
    task.set_defaults(func=cmd_task)

    precision = sub.add_parser("precision", help="pin a task of the running daemon to a precision, or auto")
    precision.add_argument("task", metavar="TASK")
    precision.add_argument("mode", metavar="MODE", help="auto (the supervisor chooses), fp32, fp16 or int8")
    _control_args(precision, timeout=5.0)
    precision.set_defaults(func=cmd_precision)

    reloading = sub.add_parser("reload", help="make the running daemon read its config file again and apply what"
                               " changed (as SIGHUP and systemctl reload do); a refused config changes nothing")
    _control_args(reloading, timeout=120.0)
    reloading.set_defaults(func=cmd_reload)

    subscribe = sub.add_parser("subscribe", help="print results published by a running daemon")
    subscribe.add_argument("--endpoint", help="results endpoint (default: the ipc socket of `edge run`)")
    subscribe.add_argument("--topic", action="append", metavar="PREFIX", help="topic prefix, repeatable (default all)")
    subscribe.add_argument("--count", type=_positive, help="exit after N messages")
    subscribe.add_argument("--json", action="store_true", help="one JSON object per line")
    subscribe.add_argument("--notice-after", type=_seconds, default=3.0, metavar="SECONDS",
                           help="say so on stderr after SECONDS with nothing received, then every 10 s"
                           " (default 3; 0: never)")
    subscribe.add_argument("--curve", nargs=2, metavar=("CLIENT.key_secret", "SERVER.key"),
                           help="a tcp endpoint with CURVE: this client's key pair and the daemon's public key")
    subscribe.set_defaults(func=cmd_subscribe)

    curve_keys = sub.add_parser("curve-keys", help="make a CURVE key pair (for output.curve and subscribers)")
    curve_keys.add_argument("directory", type=Path, help="where NAME.key (public) and NAME.key_secret go")
    curve_keys.add_argument("name", help="e.g. edge-daemon, or the subscribing program's name")
    curve_keys.set_defaults(func=cmd_curve_keys)

    assets = sub.add_parser("assets", help="demo assets").add_subparsers(dest="assets_command", required=True)
    fetch = assets.add_parser("fetch", help="fetch, verify and convert the demo model, video and images")
    fetch.add_argument("--cache-dir", type=Path, help="default $EDGE_CACHE or ~/.cache/edge")
    fetch.add_argument("--rebuild", action="store_true",
                       help="remake the FP16 and INT8 variants (also retries a refused one)")
    fetch.set_defaults(func=cmd_assets_fetch)

    build = sub.add_parser("build", help="build a TensorRT plan from an ONNX variant on this device (Jetson)")
    build.add_argument("onnx", type=Path, help="the variant: fp32, fp16 or int8 Q/DQ ONNX")
    build.add_argument("--output", type=Path, help="plan path (default: plans/<name>.<device>.plan beside the ONNX)")
    build.add_argument("--dla", type=int, metavar="N", help="build for DLA core N, with GPU fallback")
    build.add_argument("--workspace", type=_positive, default=1024, metavar="MB", help="workspace pool limit")
    build.add_argument("--timing-cache", type=Path, metavar="FILE", help="read and update this timing cache")
    build.add_argument("--shapes", nargs="+", metavar="NAME:SHAPE",
                       help="NAME:1x3x416x416, or NAME:MIN,OPT,MAX for dynamic inputs")
    build.add_argument("--profiles", type=_positive, default=1, metavar="N",
                       help="dynamic inputs: N optimization profiles, so N cameras can run the plan at once")
    build.add_argument("--legacy-fp16", action="store_true",
                       help="TensorRT 10.x only: weakly typed network with the FP16 flag (deprecated path)")
    build.set_defaults(func=cmd_build)

    selftest = sub.add_parser("selftest", help="check that this machine (a Jetson above all) runs edge")
    selftest.add_argument("--require-tensorrt", action="store_true",
                          help="fail when CUDA or TensorRT is missing (the default on a Jetson)")
    selftest.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                          help="demo variant to build and run as a TensorRT plan")
    selftest.set_defaults(func=cmd_selftest)

    keys = sub.add_parser("keys", help="keys that sign engine bundles").add_subparsers(dest="keys_command",
                                                                                     required=True)
    generate = keys.add_parser("generate", help="a new Ed25519 key pair: NAME.key (0600) and NAME.pub")
    generate.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write them (made 0700)")
    generate.add_argument("--name", default="edge-bundle", help="file name stem (default edge-bundle)")
    generate.set_defaults(func=cmd_keys_generate)

    bundle = sub.add_parser("bundle", help="signed engine bundles: pack, verify, install into A/B slots, roll back")
    bundles = bundle.add_subparsers(dest="bundle_command", required=True)
    pack = bundles.add_parser("pack", help="pack engine repositories into a signed bundle")
    pack.add_argument("models", nargs="+", type=Path, metavar="MODEL_DIR", help="engine repositories (manifest.json)")
    pack.add_argument("--key", type=Path, required=True, help="the private key (edge keys generate)")
    pack.add_argument("--version", required=True, help="the bundle's version, e.g. 2026.11.1")
    pack.add_argument("--out", type=Path, required=True, metavar="FILE", help="the bundle to write")
    pack.set_defaults(func=cmd_bundle_pack)
    verify = bundles.add_parser("verify", help="check a bundle completely (signature, sha256, paths); keep nothing")
    verify.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for standard input")
    _bundle_keys_arg(verify)
    verify.set_defaults(func=cmd_bundle_verify)
    install = bundles.add_parser("install", help="install into the inactive slot, switch, check health, roll back"
                                 " on failure")
    install.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for standard input")
    _bundle_switch_args(install)
    install.set_defaults(func=cmd_bundle_install)
    activate = bundles.add_parser("activate", help="make an installed slot current (verified again, health checked)")
    activate.add_argument("slot", choices=["a", "b"])
    _bundle_switch_args(activate, force=True)
    activate.set_defaults(func=cmd_bundle_activate)
    rollback = bundles.add_parser("rollback", help="make the other slot current again")
    _bundle_switch_args(rollback, force=True)
    rollback.set_defaults(func=cmd_bundle_rollback)
    listing = bundles.add_parser("list", help="the slots: versions, keys, health, which is current")
    _bundle_root_arg(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_bundle_list)

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
    half.add_argument("--every", type=_positive, default=1, help="use every K-th video frame")
    half.set_defaults(func=cmd_fp16)

    quant = model.add_parser("quantize", help="INT8 Q/DQ variant calibrated on your frames")
    quant.add_argument("input", type=Path)
    quant.add_argument("output", type=Path)
    quant.add_argument("--calib", nargs="+", required=True, metavar="SRC", help="videos, images or image folders")
    quant.add_argument("--select", choices=["random", "diverse"], default="diverse",
                       help="how to pick --count frames (default diverse: k-center greedy)")
    quant.add_argument("--count", type=_positive, help="calibration frames to use (default: all)")
    quant.add_argument("--method", choices=["entropy", "minmax", "percentile"], default="percentile",
                       help="calibration method (default percentile: best in docs/int8-calibration.md)")
    quant.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="nodes to keep in float")
    quant.add_argument("--seed", type=int, default=0, help="seed of --select random")
    quant.add_argument("--every", type=_positive, default=1, help="use every K-th video frame")
    quant.set_defaults(func=cmd_quantize)

    evaluate = model.add_parser("evaluate", help="accuracy gate: candidate detections against a reference")
    evaluate.add_argument("--reference", type=Path, required=True, help="e.g. the fp32 or fp16 variant")
    evaluate.add_argument("--candidate", type=Path, required=True, help="e.g. the int8 variant")
    evaluate.add_argument("--data", nargs="+", required=True, metavar="SRC", help="held-out videos/images/folders")
    evaluate.add_argument("--min-f1", type=float, help="exit 1 when F1 against the reference is below this")
    evaluate.add_argument("--conf", type=float, default=0.3, help="confidence threshold for F1 (default 0.3)")
    evaluate.add_argument("--labels", type=Path, help="COCO-format labels for real mAP (pycocotools)")
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    evaluate.add_argument("--every", type=_positive, default=1, help="use every K-th video frame")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def _daemon_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="control socket, ipc:///PATH (overrides control.endpoint, like EDGE_CONTROL_ENDPOINT)")
    parser.add_argument("--telemetry", metavar="URI", help="auto, none, jtop, sysfs, sysfs:///ROOT, nvml or"
                        " trace:///PATH.jsonl (overrides supervisor.telemetry, like EDGE_TELEMETRY)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, e.g. 127.0.0.1:9108"
                        " (overrides metrics.listen, like EDGE_METRICS_LISTEN; on unless metrics.enabled is false)")


def _control_args(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    parser.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default:"
                        " $EDGE_CONTROL_ENDPOINT, else the ipc socket of `edge run`)")
    parser.add_argument("--timeout", type=_positive_seconds, default=timeout, metavar="SECONDS",
                        help=f"wait this long for the reply (default {timeout:g})")


def _bundle_keys_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, default=Path("/etc/edge/trusted-keys"), metavar="DIR",
                        help="trusted public keys, *.pub (default /etc/edge/trusted-keys)")


def _bundle_root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/var/lib/edge/bundles"), metavar="DIR",
                        help="where the slots are (default /var/lib/edge/bundles)")


def _bundle_switch_args(parser: argparse.ArgumentParser, *, force: bool = False) -> None:
    _bundle_root_arg(parser)
    _bundle_keys_arg(parser)
    parser.add_argument("--restart", action="store_true",
                        help="restart the daemon after the switch (systemctl restart edge-runtime), and again after"
                             " a rollback")
    parser.add_argument("--no-health", action="store_true", help="switch without checking the daemon's health")
    parser.add_argument("--health-timeout", type=_positive_seconds, default=60.0, metavar="SECONDS",
                        help="how long the daemon has to show every lane processing frames (default 60)")
    parser.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default:"
                        " $EDGE_CONTROL_ENDPOINT, else the ipc socket of `edge run`)")
    if force:
        parser.add_argument("--force", action="store_true", help="activate a slot that failed its last health check")


MAX_SECONDS = 86_400       # a day; ZeroMQ's poll takes milliseconds as a C int (24.8 days: 3e6 s overflowed)


def _seconds(text: str) -> float:
    """A time in seconds from 0 to MAX_SECONDS (inf, nan, negatives and huge numbers would wait for ever, not at all,
    or overflow)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_SECONDS:                 # False for nan too
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_SECONDS}, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 (up to {MAX_SECONDS}), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, *, reloads: threading.Event | None = None) -> int:
    """`reloads`: set by the SIGHUP handler edge/__main__.py installs for `edge run` before this module is imported
    (a reload asked for while the daemon starts runs once it is ready); made here when called otherwise."""
    args = build_parser().parse_args(argv)
    if args.func is cmd_run:
        if reloads is None:
            reloads = threading.Event()
            signal.signal(signal.SIGHUP, lambda signum, frame: reloads.set())
        args.reloads = reloads
    setup_logging(getattr(args, "log_level", None) or "info")
    # SIGTERM ends a tool like Ctrl-C does, through every `finally`, so no temporary file is left behind
    # (run, demo and subscribe install their own graceful handlers).
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = args.func(args)
        sys.stdout.flush()              # a reader that has gone shows here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except EdgeError as exc:
        print(f"edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """The reader of standard output has gone (`edge subscribe | head -2`): end quietly, with the status of a
    command that SIGPIPE ended, as `yes | head` does (128 + 13). Python ignores SIGPIPE so that writes fail with
    EPIPE instead; what is still buffered goes to /dev/null so that the flush at exit does not fail again
    (Python docs, library/signal.rst, "Note on SIGPIPE", 3.10-3.12). SIGPIPE stays ignored: a socket whose peer
    has gone must not kill the process."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE
