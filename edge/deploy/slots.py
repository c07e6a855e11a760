"""A/B slots under the bundle root (BUNDLES), the `current` link and the lock: one bundle command at a time.

A slot is only ever made by renaming a complete, verified `.incoming-*` directory, and `current` only ever
changes by renaming a new link over it, so a crash at any point leaves `current` naming a complete slot. What a
crash leaves behind (LEFTOVERS) is removed by the next command that takes the lock, `list` included. The
layout: docs/operations.md, "On disk".
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge.deploy.common import BUNDLES, BundleError, check_private_dir, utc_now, write_json
from edge.files import fsync_dir

SLOTS = ("a", "b")
CURRENT = "current"
RECORD = "install.json"
LEFTOVERS = (".incoming-", ".trash-", ".current-")
OPTIONAL = ("downgrade_from", "committed")      # Record fields that install.json of an older edge lacks


@dataclasses.dataclass(frozen=True)
class Record:
    """How a slot came to be and how its last health check went (`install.json` in the slot, not signed)."""

    installed: str
    source: str
    key_id: str
    health: str = "pending"      # pending | ok | not checked | failed: <why>
    downgrade_from: str = ""     # the highest committed version an --allow-downgrade install went below
    committed: str = ""          # when a pending install was committed (edge.deploy.install.commit_pending)

    def with_health(self, health: str) -> Record:
        return dataclasses.replace(self, health=health)

    def to_json(self) -> dict[str, str]:
        """The fields, without the optional ones that are empty."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v or k not in OPTIONAL}


class Store:
    def __init__(self, root: Path = BUNDLES) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the root (0755) if missing, and refuse one that another user could change."""
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create the bundle root {self.root}: {exc.strerror}",
                              hint="run as root (sudo), or pass --root DIR") from exc
        check_private_dir(self.root, "bundle root")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the root's lock (released by the kernel if this process dies); BundleError when another holds it."""
        path = self.root / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise BundleError(f"cannot open the lock {path}: {exc.strerror}",
                              hint="run as the bundle root's owner (sudo), or pass --root DIR") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise BundleError(f"another edge bundle command is using {self.root}", note=f"its pid: {holder}",
                                  hint="wait for it to finish, then try again") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def cleanup(self) -> list[str]:
        """Remove what an interrupted command left behind (call with the lock held); the names removed."""
        removed = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(LEFTOVERS):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
        return removed

    def current(self) -> str | None:
        """The active slot, or None before the first install; BundleError when `current` is not ours."""
        link = self.root / CURRENT
        if not link.is_symlink():
            if link.exists():
                raise BundleError(f"{link} is not a symbolic link", hint=f"move it away; `current` links to a slot"
                                                                        f" ({', '.join(SLOTS)})")
            return None
        target = os.readlink(link)
        if target not in SLOTS:
            raise BundleError(f"{link} points to {target!r}, not to a slot ({', '.join(SLOTS)})",
                              hint=f"point it at a slot: edge bundle activate {SLOTS[0]}")
        return target

    def other(self, slot: str | None) -> str:
        return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]

    def slot(self, name: str) -> Path:
        if name not in SLOTS:
            raise BundleError(f"no slot {name!r}", hint=f"slots: {', '.join(SLOTS)}")
        return self.root / name

    def incoming(self) -> Path:
        """A new private staging directory beside the slots (same filesystem, so it can be renamed into place)."""
        try:
            return Path(tempfile.mkdtemp(prefix=LEFTOVERS[0], dir=self.root))
        except OSError as exc:
            raise BundleError(f"cannot make a staging directory in {self.root}: {exc.strerror}",
                              hint="free space on that filesystem (df -h), then install again") from exc

    def place(self, staged: Path, slot: str) -> None:
        """Make the complete directory `staged` the slot `slot` (never the active one), replacing what it held."""
        if slot == self.current():
            raise BundleError(f"slot {slot} is active: it is never replaced in place",
                              hint="install into the other slot")
        target = self.slot(slot)
        try:
            os.chmod(staged, 0o755)
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=LEFTOVERS[1], dir=self.root))
                os.rename(target, trash / slot)
                os.rename(staged, target)
                shutil.rmtree(trash)
            else:
                os.rename(staged, target)
            fsync_dir(self.root)
        except OSError as exc:
            raise BundleError(f"cannot move the new bundle into slot {slot}: {exc.strerror}", note=str(exc.filename),
                              hint=f"check {self.root} (its filesystem, its owner); the active slot is unchanged"
                              ) from exc

    def switch(self, slot: str | None) -> None:
        """Point `current` at `slot` atomically (a new link renamed over it); None removes it."""
        link = self.root / CURRENT
        try:
            if slot is None:
                link.unlink(missing_ok=True)
            else:
                self.slot(slot)
                tmp = self.root / f"{LEFTOVERS[2]}{os.getpid()}"
                tmp.unlink(missing_ok=True)
                os.symlink(slot, tmp)
                os.replace(tmp, link)
            fsync_dir(self.root)
        except OSError as exc:
            raise BundleError(f"cannot point {link} at {slot or 'nothing'}: {exc.strerror}",
                              hint=f"check {self.root} (its filesystem, its owner)") from exc

    def record(self, slot: str) -> Record | None:
        try:
            data = json.loads((self.slot(slot) / RECORD).read_text(encoding="utf-8"))
            return Record(**{f.name: str(data[f.name]) for f in dataclasses.fields(Record)
                             if f.name in data or f.name not in OPTIONAL})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_record(self, directory: Path, record: Record) -> None:
        write_json(directory / RECORD, record.to_json())

    def set_health(self, slot: str, health: str) -> None:
        record = self.record(slot) or Record(utc_now(), "unknown", "unknown")
        self.write_record(self.slot(slot), record.with_health(health))

    def version(self, slot: str) -> str | None:
        """The version in a slot's bundle.json (read without verifying), None when it cannot be read."""
        try:
            return str(self._bundle_json(slot)["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _bundle_json(self, slot: str) -> Any:
        """A slot's bundle.json as it is on disk (not verified: see `verify_slot` for that)."""
        return json.loads((self.slot(slot) / "bundle.json").read_text(encoding="utf-8"))

    def describe(self, slot: str) -> dict[str, Any]:
        """What `list` shows of a slot (read without verifying: see `verify_slot` for that)."""
        path = self.slot(slot)
        if not path.is_dir():
            return {"slot": slot, "empty": True}
        info: dict[str, Any] = {"slot": slot, "empty": False}
        try:
            manifest = self._bundle_json(slot)
            info.update(version=manifest.get("version"), created=manifest.get("created"),
                        models={m: sorted({v.get("precision") for v in vs}) for m, vs in manifest["models"].items()},
                        plans_for=sorted({f"{k.get('board')} L4T {k.get('l4t')} TensorRT {k.get('tensorrt')}"
                                          for k in manifest.get("device_keys", [])}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            info["problem"] = f"bundle.json unreadable: {exc!r:.120}"
        record = self.record(slot)
        if record is not None:
            info.update(record.to_json())
        return info
