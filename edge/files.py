"""Files and directories that another process may have put in edge's way: reading only a regular file, opened
without blocking, up to a bound (a config, a telemetry trace); and where edge's cache lives."""
from __future__ import annotations

import os
import stat
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


def read_regular(path: Path, limit: int) -> bytes:
    """The whole file, of at most `limit` bytes. O_NONBLOCK: a FIFO in its place is refused, not waited on for a
    writer, and no device is read; a file over the limit by its size is not read at all. OSError where the system
    refuses (ENOENT, EACCES, ENAMETOOLONG, ...); NotRegularFile, FileTooLarge."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
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
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))
    return next((name for test, name in kinds if test(mode)), f"mode {stat.filemode(mode)}")


def shown(path: str | Path) -> str:
    """A path for a message: whole, or its start and its length when it is too long to read."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:120]}... ({len(text)} characters)"
