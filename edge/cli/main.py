"""The `edge` command: the parser, assembled from the subcommands of each audience's module, and `main()`, which
runs one and turns what it raises into an exit status."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from edge import __version__
from edge.cli import deploy, models, operations, run
from edge.cli.common import terminated
from edge.errors import EdgeError
from edge.log import setup_logging

# the subcommands, in the order `edge --help` lists them
SUBCOMMANDS = (run.add_run, run.add_demo, operations.add_status, operations.add_task, operations.add_precision,
               operations.add_reload, run.add_subscribe, run.add_curve_keys, models.add_assets, models.add_build,
               operations.add_selftest, deploy.add_keys, deploy.add_bundle, models.add_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="Perception runtime for NVIDIA Jetson in vehicles.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None, *, reloads: threading.Event | None = None) -> int:
    """`reloads`: set by the SIGHUP handler edge/__main__.py installs for `edge run` before this module is imported
    (a reload asked for while the daemon starts runs once it is ready); made here when called otherwise."""
    args = build_parser().parse_args(argv)
    if args.func is run.cmd_run:
        if reloads is None:
            reloads = threading.Event()
            signal.signal(signal.SIGHUP, lambda signum, frame: reloads.set())
        args.reloads = reloads
    setup_logging(getattr(args, "log_level", None) or "info")
    # SIGTERM ends a tool like Ctrl-C does, through every `finally`, so no temporary file is left behind
    # (run, demo and subscribe install their own graceful handlers).
    signal.signal(signal.SIGTERM, terminated)
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
