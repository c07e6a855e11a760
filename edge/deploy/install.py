"""install, activate, rollback and list, and a pending install's commit and rollback: the slot operations,
each under the root's lock.

install: refuse while an install is pending; verify the bundle while extracting it into a staging directory
beside the slots (its manifest admitted first: not older than the highest committed version, something this
device can run), rename it into the slot that is not active, switch `current` to it, restart the daemon when
asked, check its health, then raise the highest committed version, or (commit=False) leave `pending.json` for
commit_pending or rollback_pending. On any failure after the switch, switch `current` back (and restart again),
record why in the slot, and raise. Before the switch a failure removes the staging directory and changes
nothing else.
"""
from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.deploy import admission, archive, health, keys, marks
from edge.deploy.common import BundleError, utc_now
from edge.deploy.slots import SLOTS, Record, Store
from edge.engines import repository
from edge.engines.repository import DeviceKey
from edge.engines.tensorrt import plan
from edge.errors import EdgeError, EngineError

RESTART = ("systemctl", "restart", "edge-runtime")
RESTART_HINT = "restart the daemon to load it: systemctl restart edge-runtime (or install with --restart)"
OPERATOR = "failed: rolled back by the operator"


@dataclasses.dataclass(frozen=True)
class Activation:
    """What follows a switch of `current`: a restart of the daemon (a command), then a health check."""

    restart: Sequence[str] | None = None
    health: health.HealthCheck | None = None
    restart_timeout_s: float = 300.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    slot: str
    previous: str | None
    version: str
    key_id: str
    health: str                 # the health check's summary, or why there was none
    notes: tuple[str, ...] = ()


def verify(source: Path | io.BufferedIOBase, *, trusted_dir: Path,
           limits: archive.Limits | None = None) -> archive.Verified:
    """Check a bundle completely (signature, every file's size and sha256, paths, limits); extract nothing."""
    return archive.read(source, keys.load_trusted(trusted_dir), archive.Discard(), trusted_dir=trusted_dir,
                        limits=limits)


def install(source: Path | io.BufferedIOBase, *, root: Path, trusted_dir: Path, activation: Activation,
            limits: archive.Limits | None = None, allow_downgrade: bool = False, commit: bool = True,
            device_key: Callable[[], DeviceKey | None] = plan.device_key) -> Outcome:
    """Install a bundle into the inactive slot and make it current (module doc). commit=False leaves it pending:
    the highest committed version stays, and pending.json names it until commit_pending or rollback_pending."""
    store = Store(root)
    store.prepare()
    trusted = keys.load_trusted(trusted_dir)
    with store.lock():
        notes = _cleaned(store.cleanup())
        _refuse_pending(store)
        mark = marks.committed(store)
        previous = store.current()
        target = store.other(previous)
        below = ""

        def admit(manifest: archive.BundleManifest) -> None:
            nonlocal below
            below = admission.not_older(manifest, mark, allow_downgrade=allow_downgrade)
            admission.runnable(manifest, device_key())
        staged = store.incoming()
        try:
            sink = archive.Extract(staged)
            verified = archive.read(source, trusted, sink, trusted_dir=trusted_dir, limits=limits, admit=admit)
            _check_repositories(staged, verified.manifest)
            sink.add(archive.MANIFEST, verified.raw)
            sink.add(archive.SIGNATURE, verified.signature)
            store.write_record(staged, Record(utc_now(), str(source) if isinstance(source, Path) else "<stdin>",
                                              verified.key_id, downgrade_from=below))
            store.place(staged, target)
        finally:
            if staged.exists():
                shutil.rmtree(staged)
        version = verified.manifest.version
        marks.keep(store)
        if below:
            notes += (f"bundle {version} is older than bundle {below}, the highest version committed here:"
                      f" installed because of {admission.DOWNGRADE_HINT} (recorded in slot {target}); the highest"
                      f" committed version stays {below}",)
        if not commit:
            marks.write_pending(store, marks.Pending(target, previous, version, utc_now()))
        summary = _switch_checked(store, target, previous, activation, f"bundle {version}", pending=not commit)
        if commit:
            marks.raise_to(store, version, target)
        else:
            notes += (f"bundle {version} in slot {target} is pending: commit it (mender commit) or roll it back"
                      " (mender rollback, or edge bundle rollback)",)
        return Outcome(target, previous, version, verified.key_id, summary,
                       (*notes, *_device_notes(verified.manifest)))


def commit_pending(*, root: Path, version: str | None = None) -> str:
    """Make the pending install permanent (Mender's ArtifactCommit): the highest committed version rises to its
    version, its slot's install.json records the commit, pending.json goes, in that order, so a crash between
    them is finished by the next call. Without a pending install: 'already committed' when `current` holds
    `version` committed, else BundleError."""
    store = _root(root)
    with store.lock():
        found = marks.pending(store)
        current = store.current()
        if found is None:
            held = store.version(current) if current else None
            mark = marks.committed(store)
            if version is not None and held is not None and mark is not None and marks.same_version(held, version) \
                    and archive.version_of(version) <= mark.ordered() and _healthy(store, current):
                return f"bundle {held} in slot {current} is committed already: nothing to do"
            raise BundleError(f"no install is pending in {root}: nothing to commit"
                              + (f" (bundle {version} asked; current -> {current or 'none'} holds"
                                 f" {held or 'no bundle'})" if version is not None else ""),
                              hint="edge bundle list shows the slots; install the bundle first")
        if version is not None and not marks.same_version(version, found.version):
            raise BundleError(f"cannot commit bundle {version}: the pending install is bundle {found.version} in slot"
                              f" {found.slot}", hint="commit the deployment that installed it, or roll it back")
        record = store.record(found.slot)
        if current != found.slot or record is None or record.health not in marks.HEALTHY:
            raise BundleError(f"cannot commit bundle {found.version}: slot {found.slot} is not current and healthy"
                              f" (current -> {current or 'none'}, its health: {record and record.health})",
                              note="it failed its health check, or its install was interrupted; nothing committed",
                              hint="roll it back (mender rollback, or edge bundle rollback), then install it again")
        at = utc_now()
        mark = marks.raise_to(store, found.version, found.slot, at)
        store.write_record(store.slot(found.slot), dataclasses.replace(record, committed=at))
        marks.clear_pending(store)
        return f"committed bundle {found.version} in slot {found.slot}; the highest committed version is {mark.version}"


def rollback_pending(*, root: Path, trusted_dir: Path, activation: Activation) -> str:
    """Undo the pending install (Mender's ArtifactRollback): switch back to the slot before it if `current` is
    its slot (restart and health check as `activation` says), mark its slot failed, remove pending.json.
    Idempotent; a committed install is never touched."""
    store = _root(root)
    with store.lock():
        found = marks.pending(store)
        current = store.current()
        if found is None:
            return f"no install is pending in {root}: nothing to roll back (current -> {current or 'none'})"
        if _committed(store, found):
            marks.clear_pending(store)
            return f"bundle {found.version} in slot {found.slot} is committed already: nothing rolled back"
        back = f"current -> {current or 'none'} already"
        if current == found.slot:
            if found.previous is not None:
                verify_slot(store, found.previous, keys.load_trusted(trusted_dir), trusted_dir)
            marks.keep(store, found)
            back = _switch_back(store, found.previous, activation, f"bundle {found.version} not committed")
        _drop_pending(store, found, "failed: rolled back (not committed)")
        return f"rolled back the pending install of bundle {found.version} in slot {found.slot}: {back}"


def activate(slot: str, *, root: Path, trusted_dir: Path, activation: Activation, force: bool = False) -> Outcome:
    """Make an installed slot current, after verifying it again; switch back if it is not healthy. A pending
    install ends: its slot, if another, is marked failed."""
    store, trusted = _open(root, trusted_dir)
    with store.lock():
        return _activate(store, store.slot(slot).name, trusted, trusted_dir, activation, force=force)


def rollback(*, root: Path, trusted_dir: Path, activation: Activation, force: bool = False) -> Outcome:
    """Make the other slot current again (the bundle that was active before the last install). With a pending
    install that never became current (or went back by itself), only that install ends: marked failed."""
    store, trusted = _open(root, trusted_dir)
    with store.lock():
        current = store.current()
        found = marks.pending(store)
        if found is not None and current != found.slot:
            notes = _cleaned(store.cleanup()) + (_drop_pending(store, found, OPERATOR),)
            if current is None:
                raise BundleError(f"no bundle is installed in {root}: nothing to roll back to", note=notes[-1],
                                  hint="install one: edge bundle install BUNDLE")
            verified = verify_slot(store, current, trusted, trusted_dir)
            return Outcome(current, current, verified.manifest.version, verified.key_id, "not checked: no switch",
                           notes)
        if current is None:
            raise BundleError(f"no bundle is installed in {root}: nothing to roll back",
                              hint="install one: edge bundle install BUNDLE")
        target = store.other(current)
        if not store.slot(target).is_dir():
            raise BundleError(f"nothing to roll back to: slot {target} is empty (one bundle installed so far)",
                              hint="install the bundle you want: edge bundle install BUNDLE")
        return _activate(store, target, trusted, trusted_dir, activation, force=force)


def list_slots(root: Path) -> dict[str, Any]:
    """The slots, what each holds, which is current; removes leftovers of an interrupted command when it can."""
    store = Store(root)
    if not root.is_dir():
        return {"root": str(root), "current": None, "slots": [{"slot": s, "empty": True} for s in SLOTS],
                "notes": [f"{root} does not exist: no bundle installed"], "pending": None, "committed": None}
    try:
        with store.lock():
            notes, idle = _cleaned(store.cleanup()), True
    except BundleError as exc:
        notes, idle = (f"leftovers not checked: {exc.what}",), False
    current = store.current()
    record = store.record(current) if current else None
    found, mark = None, None
    try:
        found = marks.pending(store)
        mark = marks.committed(store, found)
    except BundleError as exc:
        notes += (exc.what,)
    if found is not None:
        notes += (f"bundle {found.version} in slot {found.slot} is pending since {found.at} (not committed): mender"
                  " commit or mender rollback, or `edge bundle rollback` ends it",)
    elif idle and record is not None and record.health == "pending":
        notes += (f"slot {current} is current but its health was never checked: the command that switched to it did"
                  " not finish. Check `edge status`; `edge bundle rollback` goes back to the other slot",)
    return {"root": str(root), "current": current,
            "slots": [{**store.describe(s), "current": s == current} for s in SLOTS], "notes": list(notes),
            "pending": dataclasses.asdict(found) if found else None,
            "committed": dataclasses.asdict(mark) if mark else None}


def verify_slot(store: Store, slot: str, trusted: dict[str, Ed25519PublicKey], trusted_dir: Path) -> archive.Verified:
    """Check an installed slot as `install` checked its archive: signature, then each file's size and sha256."""
    path = store.slot(slot)
    if not path.is_dir():
        raise BundleError(f"slot {slot} is empty", hint="install a bundle: edge bundle install BUNDLE")
    try:
        raw = (path / archive.MANIFEST).read_bytes()
        signature = (path / archive.SIGNATURE).read_bytes()
    except OSError as exc:
        raise BundleError(f"slot {slot} holds no bundle: {exc.strerror}: {exc.filename}",
                          hint="install a bundle into it again") from exc
    kid = keys.verify(signature, raw, trusted, trusted_dir=trusted_dir)
    manifest = archive.BundleManifest.parse(raw, archive.Limits())
    for entry in manifest.files:
        problem = _file_problem(path / entry.path, entry)
        if problem:
            raise BundleError(f"slot {slot} is not intact: {entry.path} {problem}",
                              hint="install the bundle again (edge bundle install BUNDLE)")
    return archive.Verified(manifest, kid, raw, signature)


def _file_problem(path: Path, entry: archive.FileEntry) -> str | None:
    if path.is_symlink() or not path.is_file():
        return "is missing or not a regular file"
    if path.stat().st_size != entry.size:
        return f"has {path.stat().st_size} bytes, the signed manifest says {entry.size}"
    actual = repository.sha256_file(path)
    if actual != entry.sha256:
        return f"has sha256 {actual[:16]}..., the signed manifest says {entry.sha256[:16]}..."
    return None


def _open(root: Path, trusted_dir: Path) -> tuple[Store, dict[str, Ed25519PublicKey]]:
    return _root(root), keys.load_trusted(trusted_dir)


def _root(root: Path) -> Store:
    store = Store(root)
    if not root.is_dir():
        raise BundleError(f"no bundle root {root}: nothing installed", hint="install one: edge bundle install BUNDLE")
    store.prepare()
    return store


def _refuse_pending(store: Store) -> None:
    found = marks.pending(store)
    if found is not None:
        raise BundleError(f"a deployment of bundle {found.version} is pending in slot {found.slot}; mender commit or"
                          " mender rollback first", note=f"pending since {found.at}; nothing was read or changed",
                          hint="or `edge bundle rollback` ends it (the pending slot is marked failed)")


def _healthy(store: Store, slot: str | None) -> bool:
    record = store.record(slot) if slot else None
    return record is not None and record.health in marks.HEALTHY


def _committed(store: Store, found: marks.Pending) -> bool:
    """Whether commit_pending has begun on `found` (then it counts as committed): its slot's record says so, or
    committed.json names its slot and version since it became pending."""
    record = store.record(found.slot)
    if record is not None and record.committed:
        return True
    mark = marks.committed(store, found)
    return mark is not None and mark.source == marks.COMMITTED and mark.slot == found.slot and \
        marks.same_version(mark.version, found.version) and mark.at >= found.at


def _drop_pending(store: Store, found: marks.Pending, why: str) -> str:
    """Mark the pending install's slot failed (unless a health check recorded why already), remove pending.json."""
    record = store.record(found.slot)
    if record is None or not record.health.startswith("failed"):
        store.set_health(found.slot, why)
    marks.clear_pending(store)
    return f"the pending install of bundle {found.version} in slot {found.slot} ended: {why}"


def _activate(store: Store, slot: str, trusted: dict[str, Ed25519PublicKey], trusted_dir: Path,
              activation: Activation, *, force: bool) -> Outcome:
    notes = _cleaned(store.cleanup())
    previous = store.current()
    if slot == previous:
        raise BundleError(f"slot {slot} is active already", hint="edge bundle list shows the slots")
    verified = verify_slot(store, slot, trusted, trusted_dir)
    version = verified.manifest.version
    record = store.record(slot)
    if record is not None and record.health.startswith("failed") and not force:
        raise BundleError(f"slot {slot} (bundle {version}) failed its last health check",
                          note=record.health, hint="fix the cause and pass --force to activate it anyway")
    found = marks.pending(store)
    marks.keep(store, found)
    summary = _switch_checked(store, slot, previous, activation, f"bundle {version}")
    if found is not None and found.slot != slot:
        notes += (_drop_pending(store, found, OPERATOR),)
    elif found is not None:
        marks.clear_pending(store)
        notes += (f"the pending install of bundle {found.version} in slot {slot} ended: activated by the operator",)
    marks.raise_to(store, version, slot)
    return Outcome(slot, previous, version, verified.key_id, summary, (*notes, *_device_notes(verified.manifest)))


def _switch_checked(store: Store, slot: str, previous: str | None, activation: Activation, label: str, *,
                    pending: bool = False) -> str:
    """Point `current` at `slot`, then restart and check as `activation` says; on failure (Ctrl-C included) point
    it back at `previous` first, then record why in the slot (and end the install if `pending`), and raise,
    saying what state the daemon is left in."""
    store.switch(slot)
    try:
        summary = _restart_and_check(activation)
        store.set_health(slot, "ok" if activation.health is not None else "not checked")
    except BaseException as exc:
        why = exc.what if isinstance(exc, EdgeError) else f"interrupted ({type(exc).__name__})"
        back = _switch_back(store, previous, activation, why)
        try:
            store.set_health(slot, f"failed: {why}")
            if pending:
                marks.clear_pending(store)
        except BundleError as unrecorded:
            back += f"; not recorded in slot {slot}: {unrecorded.what}"
        if not isinstance(exc, EdgeError):
            raise
        raise BundleError(f"{label} in slot {slot} failed: {why}", note="; ".join(filter(None, [exc.note, back])),
                          hint=exc.hint) from exc
    return summary


def _restart_and_check(activation: Activation) -> str:
    started = None
    if activation.restart:
        started = time.monotonic()
        _restart(activation.restart, activation.restart_timeout_s)
    if activation.health is None:
        return "not checked (--no-health)" + ("" if activation.restart else f"; {RESTART_HINT}")
    result = health.check(dataclasses.replace(activation.health, started_after=started))
    return result if activation.restart else f"{result}; the daemon still runs the engines it started with: " \
                                             f"{RESTART_HINT}"


def _switch_back(store: Store, previous: str | None, activation: Activation, why: str) -> str:
    try:
        store.switch(previous)
    except BundleError as exc:
        raise BundleError(f"the new bundle failed ({why}) and switching `current` back to {previous} failed too:"
                          f" {exc.what}", hint=f"edge bundle activate {previous} --force" if previous else
                          f"remove {store.root}/current") from exc
    if previous is None:
        return "rolled back: `current` removed again (no bundle was active before)"
    back = f"rolled back: current -> {previous} again"
    if not activation.restart:
        return back
    try:
        return f"{back}; restarted on it: {_restart_and_check(activation)}"
    except EdgeError as exc:
        return f"{back}; restarted on it, but it is not healthy either: {exc.what}"


def _restart(command: Sequence[str], timeout_s: float) -> None:
    shown = " ".join(command)
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"cannot restart the daemon: {shown}: {exc}",
                          hint="restart it by hand (systemctl restart edge-runtime)") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise BundleError(f"restarting the daemon failed: {shown} exited {result.returncode}",
                          note=" / ".join(tail) or None,
                          hint="journalctl -u edge-runtime says why it did not start")


def _check_repositories(staged: Path, manifest: archive.BundleManifest) -> None:
    """Each model directory is an engine repository whose variants are files of the bundle, as signed."""
    signed = {entry.path: entry.sha256 for entry in manifest.files}
    for model in manifest.models:
        try:
            repo = repository.Manifest.load(staged / model)
        except EngineError as exc:
            raise BundleError(f"model {model} in the bundle is not a usable engine repository: {exc.what}",
                              hint=archive.PACK_HINT) from None
        for variant in repo.variants:
            if signed.get(f"{model}/{variant.file}") != variant.sha256:
                raise BundleError(f"model {model}: variant {variant.file} is not in the bundle as its manifest says",
                                  hint=archive.PACK_HINT)


def _device_notes(manifest: archive.BundleManifest) -> tuple[str, ...]:
    if not manifest.device_keys:
        return ()
    board, l4t = repository.read_board(), repository.read_l4t()
    if any(k.get("board") == board and k.get("l4t") == l4t for k in manifest.device_keys):
        return ()
    built = sorted({f"{k.get('board')} L4T {k.get('l4t')}" for k in manifest.device_keys})
    return (f"no plan in the bundle was built for this board ({board}, L4T {l4t}; plans for: {', '.join(built)}):"
            " tasks run ONNX variants where allowed",)


def _cleaned(removed: list[str]) -> tuple[str, ...]:
    return (f"removed what an interrupted command left: {', '.join(removed)}",) if removed else ()


def describe(listing: dict[str, Any]) -> str:
    """`edge bundle list` as text."""
    mark, found = listing.get("committed"), listing.get("pending")
    lines = [f"bundle root {listing['root']}: current -> {listing['current'] or '(none)'}",
             "highest committed version: " + (f"{mark['version']} (slot {mark['slot']}, {mark['at']}; from"
                                              f" {mark['source']})" if mark else "none"),
             "pending: " + (f"bundle {found['version']} in slot {found['slot']} (previous"
                            f" {found['previous'] or 'none'}), since {found['at']}" if found else "none")]
    for s in listing["slots"]:
        mark = "*" if s.get("current") else " "
        if s.get("empty"):
            lines.append(f"{mark} {s['slot']}  (empty)")
            continue
        models = ", ".join(f"{m} {'/'.join(p)}" for m, p in (s.get("models") or {}).items())
        lines.append(f"{mark} {s['slot']}  {s.get('version')}  created {s.get('created')}  key {s.get('key_id')}"
                     f"  installed {s.get('installed')}  health {s.get('health')}  models: {models}"
                     f"  plans for: {', '.join(s.get('plans_for') or []) or 'none'}"
                     + (f"  PROBLEM: {s['problem']}" if s.get("problem") else ""))
    lines += [f"note: {n}" for n in listing["notes"]]
    return "\n".join(lines)
