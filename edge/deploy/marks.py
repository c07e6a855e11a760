"""What a bundle root remembers besides its slots, each in one small file written atomically under the root's
lock: the highest version this device has committed (`committed.json`, the anti-rollback mark: it only ever
rises), and an install switched to but not committed yet (`pending.json`, Mender's two-phase install).
docs/operations.md, "Deploying engine bundles", says how an install uses them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from packaging.version import Version

from edge.deploy.archive import version_of
from edge.deploy.common import BundleError, utc_now, write_json
from edge.deploy.slots import SLOTS, Store
from edge.files import FileTooLarge, NotRegularFile, fsync_dir, read_regular

COMMITTED = "committed.json"
PENDING = "pending.json"
HEALTHY = ("ok", "not checked")         # a slot's health that counts as a good install
MAX_BYTES = 64 << 10                    # what either file may hold (a few hundred bytes are written)


@dataclasses.dataclass(frozen=True)
class Mark:
    """The highest committed version, the slot it was committed in, and when."""

    version: str
    slot: str
    at: str
    source: str = COMMITTED     # or the fallback of a root made before committed.json (`committed`)

    def ordered(self) -> Version:
        return version_of(self.version)


@dataclasses.dataclass(frozen=True)
class Pending:
    """An install switched to (or about to be) that nobody has committed or rolled back yet."""

    slot: str
    previous: str | None
    version: str
    at: str


def committed(store: Store, pending: Pending | None = None) -> Mark | None:
    """The highest committed version: committed.json; in a root made before it (none there), the current slot's
    bundle when its health is ok or not checked and it is not `pending`'s slot; None when nothing counts."""
    data = _read(store.root / COMMITTED, "the highest committed version")
    if data is not None:
        try:
            mark = Mark(str(data["version"]), str(data["slot"]), str(data["at"]))
            mark.ordered()
        except (KeyError, TypeError) as exc:
            raise _damaged(store.root / COMMITTED, f"{exc!r:.120}") from None
        except BundleError as exc:
            raise _damaged(store.root / COMMITTED, exc.what) from None
        if mark.slot not in SLOTS:
            raise _damaged(store.root / COMMITTED, f"slot {mark.slot!r:.40} is not a slot ({', '.join(SLOTS)})")
        return mark
    current = store.current()
    record = store.record(current) if current else None
    version = store.version(current) if current else None
    if current is None or record is None or record.health not in HEALTHY or version is None or (
            pending is not None and pending.slot == current):
        return None
    return Mark(version, current, record.installed, f"slot {current}'s bundle (no {COMMITTED} yet)")


def keep(store: Store, pending: Pending | None = None) -> None:
    """Write the mark down as committed.json when it comes from the current slot (a root made before it), so
    that switching away from that slot cannot lower it. Call before a switch."""
    mark = committed(store, pending)
    if mark is not None and mark.source != COMMITTED:
        _write_mark(store, mark)


def raise_to(store: Store, version: str, slot: str, at: str | None = None) -> Mark:
    """Make `version` (committed in `slot`) the mark unless the mark is higher already; the mark after it."""
    mark = committed(store)
    if mark is not None and mark.ordered() > version_of(version):
        return mark
    mark = Mark(version, slot, at or utc_now())
    _write_mark(store, mark)
    return mark


def pending(store: Store) -> Pending | None:
    """The pending install, None when there is none."""
    data = _read(store.root / PENDING, "the pending install")
    if data is None:
        return None
    try:
        found = Pending(str(data["slot"]), None if data["previous"] is None else str(data["previous"]),
                        str(data["version"]), str(data["at"]))
    except (KeyError, TypeError) as exc:
        raise _damaged(store.root / PENDING, f"{exc!r:.120}") from None
    if found.slot not in SLOTS or found.previous not in (None, *SLOTS):
        raise _damaged(store.root / PENDING, f"slot {found.slot!r:.40}, previous {found.previous!r:.40}")
    try:
        version_of(found.version)
    except BundleError as exc:
        raise _damaged(store.root / PENDING, exc.what) from None
    return found


def write_pending(store: Store, found: Pending) -> None:
    write_json(store.root / PENDING, dataclasses.asdict(found))


def clear_pending(store: Store) -> None:
    path = store.root / PENDING
    try:
        path.unlink(missing_ok=True)
        fsync_dir(store.root)
    except OSError as exc:
        raise BundleError(f"cannot remove {path}: {exc.strerror}",
                          hint=f"check {store.root} (its filesystem, its owner)") from exc


def same_version(a: str, b: str) -> bool:
    """Whether two versions are one (PEP 440: 2.0 is 2.0.0)."""
    return version_of(a) == version_of(b)


def _write_mark(store: Store, mark: Mark) -> None:
    write_json(store.root / COMMITTED, {"version": mark.version, "slot": mark.slot, "at": mark.at})


def _read(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in `path`, None when there is none; a link, a FIFO or more than MAX_BYTES is damage."""
    try:
        data = json.loads(read_regular(path, MAX_BYTES, follow_symlinks=False).decode("utf-8"))
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise _damaged(path, f"it {exc}", what) from None
    except FileTooLarge as exc:
        raise _damaged(path, f"it holds {exc}, more than {MAX_BYTES}", what) from None
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"{exc!r:.120}", what) from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object", what)
    return data


def _damaged(path: Path, why: str, what: str = "") -> BundleError:
    return BundleError(f"cannot read {path}{f' ({what})' if what else ''}: {why}",
                       hint=f"look at it; `edge bundle list` shows the slots. Rewrite it as docs/operations.md, \"On"
                            f" disk\", shows, or remove it (then {COMMITTED} is made again from the current slot,"
                            f" and {PENDING} means no pending install)")
