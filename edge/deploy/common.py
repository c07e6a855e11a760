"""What the parts of edge.deploy share: the error, safe directories, durable small files."""
from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Any

from edge import files
from edge.errors import EdgeError


class BundleError(EdgeError):
    """An engine bundle could not be packed, verified, installed, activated or rolled back."""


def check_private_dir(path: Path, what: str) -> None:
    """Refuse a directory that another user could change: a symbolic link, not a directory, writable by group or
    others, or owned by someone other than this user or root. Whoever can write there could plant a trusted key,
    or swap a slot under the installer."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise BundleError(f"cannot use {what} {path}: {exc.strerror}",
                          hint=f"create it (mode 0755, owned by root) or pass another {what}") from exc
    hint = f"chown root: {path} && chmod go-w {path}, or pass another {what}"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BundleError(f"{what} {path} is not a plain directory (a symbolic link or a file)", hint=hint)
    if info.st_mode & 0o022:
        raise BundleError(f"{what} {path} is writable by group or others", note=f"mode {stat.S_IMODE(info.st_mode):o}",
                          hint=hint)
    if info.st_uid not in (0, os.geteuid()):
        raise BundleError(f"{what} {path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}) or root",
                          hint=hint)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically and durably (edge.files.atomic_path), mode 0644."""
    try:
        with files.atomic_path(path, mode=0o644, durable=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}", hint="free space on that filesystem (df -h)"
                          ) from exc


def utc_now() -> str:
    """The time now as ISO 8601 UTC to the second, e.g. 2026-11-20T10:05:00Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
