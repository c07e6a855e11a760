"""Socket files of ipc:// endpoints, shared by the results and the control socket (docs/reliability.md).

The directory must be this user's and not writable by group or others; a path that is something other
than a socket is never replaced (libzmq would unlink it, losing a file); a stale socket file (nothing
listens on it) is replaced, one a live process listens on is refused; a clean stop removes its own
socket file once libzmq has released it.
"""
from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

from edge import files
from edge.errors import EdgeError


def prepare(path: Path, *, what: str, setting: str) -> None:
    """Create the directory of the socket `path` and check it is safe to bind there. `what` names the endpoint
    in errors ("results endpoint") and `setting` is where to choose another one ("output.results /
    EDGE_RESULTS_ENDPOINT"). EdgeError when it is not."""
    hint = f"set {setting} to a socket path in a directory this user owns"
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeError(f"cannot create the directory of {what} ipc://{path}: {exc.strerror}",
                        note=f"directory: {path.parent}", hint=hint) from exc
    check_dir(path.parent, owner=os.geteuid(), setting=setting)
    if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.stat().st_mode)):
        raise EdgeError(f"{what} ipc://{path} exists and is not a socket; edge does not replace it",
                        note=f"found: {_kind(path)}", hint=hint)
    if not listening(path):
        return                     # none, or a stale socket file: the bind replaces it
    raise EdgeError(f"{what} ipc://{path} is already in use by a running process",
                    note=f"pid of this process: {os.getpid()}",
                    hint=f"stop the other edge daemon (systemctl stop edge-runtime) or set {setting} to another path")


def check_dir(directory: Path, *, owner: int | None, setting: str) -> None:
    """Refuse a socket directory that someone else could have prepared (edge.files.check_private_dir; owned by
    `owner` when given): another user could otherwise bind the socket first and publish as edge. A missing
    directory passes: whoever creates it checks it then. The hint names `setting`, where to choose another path."""
    try:
        files.check_private_dir(directory, "socket directory", owners=None if owner is None else (owner,))
    except FileNotFoundError:
        return
    except files.NotPrivate as exc:
        raise EdgeError(exc.what, note=exc.note,
                        hint=f"remove it, or set {setting} to a path in a directory only this user can write"
                        ) from None


def listening(path: Path) -> bool:
    """True when something accepts connections on the unix socket at `path` (a stale file does not)."""
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def wait_released(path: Path, timeout: float) -> None:
    """libzmq closes a listener in its I/O thread after close() returns: wait (bounded) until it has,
    so the endpoint can be bound again at once in this process (a restart of the service)."""
    deadline = time.monotonic() + timeout
    while listening(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def remove_own_socket(path: Path) -> None:
    """Remove the socket file this process bound, once nothing listens on it (a clean exit leaves none)."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode) and not listening(path):
            path.unlink()
    except FileNotFoundError:
        pass


def _kind(path: Path) -> str:
    if path.is_symlink():
        return "a symbolic link"
    return "a directory" if path.is_dir() else "a regular file" if path.is_file() else "a special file"


class Waker:
    """Wakes a thread blocked in a poll: register it (it has `fileno()`), `notify()` from any thread (never
    blocks, harmless once closed), `drain()` in the polling thread. A socketpair: zmq.Poller polls it."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        return self._read.fileno()

    def notify(self) -> None:
        try:
            self._write.send(b"\0")
        except OSError:
            pass                        # full: the thread is awake already; closed: it has stopped

    def drain(self) -> None:
        try:
            self._read.recv(4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._read.close()
        self._write.close()
