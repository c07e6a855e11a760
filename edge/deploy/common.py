"""What the parts of edge.deploy share: the error, safe directories, durable small files."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from edge import files
from edge.errors import EdgeError

BUNDLES = Path("/var/lib/edge/bundles")          # the bundle root on a board: the A/B slots and `current`
TRUSTED_KEYS = Path("/etc/edge/trusted-keys")     # the public keys a bundle's signature may come from


class BundleError(EdgeError):
    """An engine bundle could not be packed, verified, installed, activated or rolled back."""


def check_private_dir(path: Path, what: str) -> None:
    """edge.files.check_private_dir for a directory of this user or root, as a BundleError with the fix: whoever
    can write there could plant a trusted key, or swap a slot under the installer."""
    try:
        files.check_private_dir(path, what, owners=(0, os.geteuid()))
    except OSError as exc:
        raise BundleError(f"cannot use {what} {path}: {exc.strerror}",
                          hint=f"create it (mode 0755, owned by root) or pass another {what}") from exc
    except files.NotPrivate as exc:
        raise BundleError(exc.what, note=exc.note, hint=f"chown root: {path} && chmod go-w {path}, or pass another"
                          f" {what}") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically and durably (edge.files.atomic_path), mode 0644."""
    try:
        with files.atomic_path(path, mode=0o644, durable=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}", hint=files.write_hint(exc, path)) from exc


def utc_now() -> str:
    """The time now as ISO 8601 UTC to the second, e.g. 2026-11-20T10:05:00Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
