"""The commands that run edge and read what it publishes: run (the daemon), demo, subscribe, curve-keys."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.cli import display
from edge.cli.common import positive, seconds
from edge.errors import EdgeError
from edge.log import LEVELS, get_logger, setup_logging

log = get_logger("cli")


def cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _on_signals(stop.set)                         # before anything that takes time (imports, the config)
    from edge.config.loader import load_config
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


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the daemon with a config file")
    run.add_argument("--config", required=True, type=Path, help="YAML config file")
    run.add_argument("--max-frames", type=positive, help="exit 0 after N frames per lane")
    run.add_argument("--wait-subscriber", type=seconds, default=0.0, metavar="SECONDS",
                     help="before starting cameras, wait up to SECONDS for a first subscriber (tests, demos)")
    run.add_argument("--log-level", choices=LEVELS, help="override logging.level")
    _daemon_args(run)
    run.set_defaults(func=cmd_run)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="the demo: YOLOv3-tiny on vtest.avi, results on ZeroMQ, live table")
    demo.add_argument("--frames", type=positive, help="stop after N frames (default: the whole video, 795)")
    demo.add_argument("--endpoint", help="results endpoint (default: a socket of this demo's own; it prints it)")
    demo.add_argument("--save-video", type=Path, metavar="PATH", help="write an annotated MP4")
    demo.add_argument("--log-level", choices=LEVELS)
    _daemon_args(demo)
    demo.set_defaults(func=cmd_demo)


def add_subscribe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subscribe = sub.add_parser("subscribe", help="print results published by a running daemon")
    subscribe.add_argument("--endpoint", help="results endpoint (default: the ipc socket of `edge run`)")
    subscribe.add_argument("--topic", action="append", metavar="PREFIX", help="topic prefix, repeatable (default all)")
    subscribe.add_argument("--count", type=positive, help="exit after N messages")
    subscribe.add_argument("--json", action="store_true", help="one JSON object per line")
    subscribe.add_argument("--notice-after", type=seconds, default=3.0, metavar="SECONDS",
                           help="say so on stderr after SECONDS with nothing received, then every 10 s"
                           " (default 3; 0: never)")
    subscribe.add_argument("--curve", nargs=2, metavar=("CLIENT.key_secret", "SERVER.key"),
                           help="a tcp endpoint with CURVE: this client's key pair and the daemon's public key")
    subscribe.set_defaults(func=cmd_subscribe)


def add_curve_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    curve_keys = sub.add_parser("curve-keys", help="make a CURVE key pair (for output.curve and subscribers)")
    curve_keys.add_argument("directory", type=Path, help="where NAME.key (public) and NAME.key_secret go")
    curve_keys.add_argument("name", help="e.g. edge-daemon, or the subscribing program's name")
    curve_keys.set_defaults(func=cmd_curve_keys)


def _daemon_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="control socket, ipc:///PATH (overrides control.endpoint, like EDGE_CONTROL_ENDPOINT)")
    parser.add_argument("--telemetry", metavar="URI", help="auto, none, jtop, sysfs, sysfs:///ROOT, nvml or"
                        " trace:///PATH.jsonl (overrides supervisor.telemetry, like EDGE_TELEMETRY)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, e.g. 127.0.0.1:9108"
                        " (overrides metrics.listen, like EDGE_METRICS_LISTEN; on unless metrics.enabled is false)")

