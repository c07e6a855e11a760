"""Files and directories that another process may have put in edge's way or may read half-written: reading only a
regular file, opened without blocking, up to a bound (a config, a telemetry trace); writing a file whole or not
at all (atomic_path); refusing a directory that another user could change (check_private_dir); and where edge's
cache lives."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path


def default_cache_dir() -> Path:
    """Where demo assets live: $EDGE_CACHE, else $XDG_CACHE_HOME/edge, else ~/.cache/edge."""
    if os.environ.get("EDGE_CACHE"):
        return Path(os.environ["EDGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge"


class NotRegularFile(ValueError):
    """The path names a FIFO, a device, a directory or a socket: nothing edge reads as a file."""


class FileTooLarge(ValueError):
    """The file holds more than the limit: `size` bytes as fstat said, or None when it grew while it was read."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"{size} bytes" if size is not None else "it grew past the limit while it was read")
        self.size = size


class NotPrivate(ValueError):
    """A directory that another user could change: `what` says which rule it breaks, `note` its mode where that is
    the reason."""

    def __init__(self, what: str, note: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.note = note


def read_regular(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The whole file, of at most `limit` bytes. O_NONBLOCK: a FIFO in its place is refused, not waited on for a
    writer, and no device is read; a file over the limit by its size is not read at all. `follow_symlinks=False`
    (O_NOFOLLOW) refuses a symbolic link in its place too, where the file's own owner and place are what make it
    trusted (a link would lend another file's content). OSError where the system refuses (ENOENT, EACCES,
    ENAMETOOLONG, ...); NotRegularFile, FileTooLarge."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks and os.path.islink(path):
            raise NotRegularFile(f"is not a regular file but {describe_mode(stat.S_IFLNK)}") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"is not a regular file but {describe_mode(info.st_mode)}")
        if info.st_size > limit:
            raise FileTooLarge(info.st_size)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(None)
    return b"".join(chunks)


def describe_mode(mode: int) -> str:
    """What a file that is not a regular file is, for a message: `a FIFO`, `a character device`, ..."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISREG, "a regular file"))
    return next((name for test, name in kinds if test(mode)), f"mode {stat.filemode(mode)}")


def check_private_dir(path: Path, what: str, *, owners: Collection[int] | None) -> None:
    """Refuse a directory that another user could change (the rules ssh and XDG use): a symbolic link or anything
    but a directory, one writable by group or others, or, where `owners` is given, one whose owner is not among
    those uids. Whoever can write there could put files of their own in it (a socket that publishes as edge, a
    trusted key, a bundle slot). `what` names the directory in the message ("socket directory"). OSError from
    lstat (FileNotFoundError: there is none); NotPrivate with the rule it breaks."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivate(f"{what} {path} is not a plain directory but {describe_mode(info.st_mode)}")
    if info.st_mode & 0o022:
        raise NotPrivate(f"{what} {path} is writable by group or others: another user could put files of their own"
                         " there", note=f"mode {stat.S_IMODE(info.st_mode):o}")
    if owners is not None and info.st_uid not in owners:
        user = os.geteuid()
        allowed = " or ".join(f"this user (uid {uid})" if uid == user else "root" if uid == 0 else f"uid {uid}"
                              for uid in sorted(set(owners), key=lambda uid: (uid != user, uid)))
        raise NotPrivate(f"{what} {path} belongs to uid {info.st_uid}, not to {allowed}")


def shown(path: str | Path) -> str:
    """A path for a message: whole, or its start and its length when it is too long to read."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:120]}... ({len(text)} characters)"


def write_hint(exc: OSError, path: Path) -> str:
    """How to fix a write of `path` that the system refused with `exc`."""
    if exc.errno == errno.EISDIR:
        return f"{path} is a directory: remove it, or write elsewhere"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {path.parent} writable by this user (id -un), or write elsewhere"
    return f"free space on the filesystem of {path.parent} (df -h)"

@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it only when the block succeeds; removed otherwise (also on
    KeyboardInterrupt), so a reader finds the old file or the whole new one, never half of it. The result gets
    `mode`, by default that of a normal new file (0666 less the umask), not mkstemp's 0600, so a service user
    can read what a technician made. `durable`: the file's data and the rename reach the disk before the block
    ends (fsync of the file and of the directory), so they survive a power cut. OSError where the system refuses."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in the directory `path` survive a power cut."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without setting it: os.umask() sets the mask of the whole process, so files
    another thread creates meanwhile would get the temporary one. Linux has shown it in /proc/self/status
    (`Umask:`) since 4.7; where that line is missing, the set-and-restore fallback is the only way."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
