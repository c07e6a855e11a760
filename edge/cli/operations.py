"""The commands that operate a running daemon through its control socket (status, task, precision, reload),
and selftest, which checks that this machine runs edge."""
from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli import display
from edge.cli.common import control_endpoint, positive_seconds


def cmd_status(args: argparse.Namespace) -> int:
    from edge.wire import control

    status = control.request(control_endpoint(args), "status", timeout_s=args.timeout)
    print(display.json_text(status, indent=2, ensure_ascii=False, default=str) if args.json
          else display.status_table(status))
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    from edge.wire import control

    control.request(control_endpoint(args), f"task.{args.action}", timeout_s=args.timeout, task=args.name)
    print(f"task {args.name}: {args.action}d")
    return 0


def cmd_precision(args: argparse.Namespace) -> int:
    from edge.wire import control

    control.request(control_endpoint(args), "precision.set", timeout_s=args.timeout, task=args.task, mode=args.mode)
    print(f"task {args.task}: precision {args.mode}" + (" (the supervisor chooses)" if args.mode == "auto" else ""))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from edge.wire import control

    result = control.request(control_endpoint(args), "reload", timeout_s=args.timeout)
    print(f"config reloaded: {result.get('changes', 'nothing changed')}")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from edge.cli import selftest

    require = args.require_tensorrt or selftest.on_jetson()
    checks = selftest.run_selftest(require_tensorrt=require, precision=args.precision, clip=args.clip)
    failed = [c.name for c in checks if c.status == selftest.FAIL]
    print(f"selftest: {len(checks) - len(failed)} of {len(checks)} checks passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="the running daemon's state: tasks, lanes, cameras, supervisor, telemetry")
    status.add_argument("--json", action="store_true", help="the control socket's status reply as JSON")
    _control_args(status, timeout=5.0)
    status.set_defaults(func=cmd_status)


def add_task(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    task = sub.add_parser("task", help="enable or disable a task of the running daemon (its cameras follow)")
    task.add_argument("action", choices=["enable", "disable"])
    task.add_argument("name", metavar="NAME", help="the task's name in the config")
    _control_args(task, timeout=30.0)
    task.set_defaults(func=cmd_task)


def add_precision(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    precision = sub.add_parser("precision", help="pin a task of the running daemon to a precision, or auto")
    precision.add_argument("task", metavar="TASK")
    precision.add_argument("mode", metavar="MODE", help="auto (the supervisor chooses), fp32, fp16 or int8")
    _control_args(precision, timeout=5.0)
    precision.set_defaults(func=cmd_precision)


def add_reload(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reloading = sub.add_parser("reload", help="make the running daemon read its config file again and apply what"
                               " changed (as SIGHUP and systemctl reload do); a refused config changes nothing")
    _control_args(reloading, timeout=120.0)
    reloading.set_defaults(func=cmd_reload)


def add_selftest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    selftest = sub.add_parser("selftest", help="check that this machine (a Jetson above all) runs edge")
    selftest.add_argument("--require-tensorrt", action="store_true",
                          help="fail when CUDA or TensorRT is missing (the default on a Jetson)")
    selftest.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                          help="demo variant to build and run as a TensorRT plan")
    selftest.add_argument("--clip", type=Path, metavar="VIDEO", help="H.264/H.265 video each decode path decodes"
                          " (default: JetPack's Multimedia API sample, where it is)")
    selftest.set_defaults(func=cmd_selftest)


def _control_args(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    parser.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default:"
                        " $EDGE_CONTROL_ENDPOINT, else the ipc socket of `edge run`)")
    parser.add_argument("--timeout", type=positive_seconds, default=timeout, metavar="SECONDS",
                        help=f"wait this long for the reply (default {timeout:g})")

