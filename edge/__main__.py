"""The `edge` command (and `python -m edge`). For `edge run` it holds SIGHUP before anything that takes time is
imported: SIGHUP's default action ends a process, and the daemon's reload handler would otherwise come only after
edge.cli.main and its imports. A reload asked for that early runs once the daemon is ready."""
import signal
import sys
import threading


def main() -> int:
    reloads = None
    if sys.argv[1:2] == ["run"]:
        reloads = threading.Event()
        signal.signal(signal.SIGHUP, lambda signum, frame: reloads.set())
    from edge.cli import main as cli

    return cli.main(reloads=reloads)


if __name__ == "__main__":
    sys.exit(main())
