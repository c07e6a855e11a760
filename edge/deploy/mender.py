"""Engine bundles through Mender: the Update Module's states (payload type `edge-bundle`, protocol v3) and the
`.mender` artifact that carries a signed bundle.

Mender's client runs the module once per state with the state and the File API directory (FILES); the module
maps each state onto the slot operations of edge.deploy.install, so a fleet deployment gets the same checks,
health check and switch back as `edge bundle install`. Mender's role, the states and what a failed vehicle
reports: docs/operations.md, "Fleet rollout".
"""
from __future__ import annotations

import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edge import files
from edge.deploy import install, marks
from edge.deploy.common import BundleError
from edge.engines import repository
from edge.errors import EngineError

PAYLOAD_TYPE = "edge-bundle"                 # the artifact's payload type, which is also the module's file name
NAME_PREFIX = f"{PAYLOAD_TYPE}-"             # an artifact's name: edge-bundle-<the bundle's version>
ANSWERS = {"SupportsRollback": "Yes", "NeedsArtifactReboot": "No"}
TOOL = "mender-artifact"
TOOL_HINT = "install it: sudo apt-get install mender-artifact (Debian/Ubuntu), or put it on PATH"
PACK_TIMEOUT_S = 3600.0
NAME_BYTES = 4096                            # header/artifact_name: one short line
_DEVICE_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def run_state(state: str, api: Path, *, root: Path, trusted_dir: Path, activation: install.Activation) -> str:
    """Run one state of the module; what it did, for Mender's deployment log ("" when it does nothing).

    The query states' answers are ANSWERS (the caller prints them). Download does nothing, so Mender stores the
    payload in FILES/files; ArtifactFailure and Cleanup have nothing to undo or remove that ArtifactRollback
    has not; an unknown state does nothing, as the protocol asks of every module."""
    if state == "ArtifactInstall":
        return _install(api, root=root, trusted_dir=trusted_dir, activation=activation)
    if state == "ArtifactCommit":
        version = artifact_version(api)
        return install.commit_pending(root=root, version=version)
    if state == "ArtifactRollback":
        if not _pending(root):              # e.g. the install failed and switched back itself
            return f"no install is pending in {root}: nothing to roll back"
        return install.rollback_pending(root=root, trusted_dir=trusted_dir, activation=activation)
    return ""


def _pending(root: Path) -> bool:
    return (root / marks.PENDING).is_file()


def _install(api: Path, *, root: Path, trusted_dir: Path, activation: install.Activation) -> str:
    """Install the payload into the inactive slot, switch, restart and check, leaving it pending for
    ArtifactCommit. A pending install found first was left by a deployment Mender gave up on (a module killed
    mid-install, a power cut): Mender runs one deployment at a time, so it is rolled back before this one."""
    bundle = payload(api)
    stale = [install.rollback_pending(root=root, trusted_dir=trusted_dir, activation=activation)] \
        if _pending(root) else []
    outcome = install.install(bundle, root=root, trusted_dir=trusted_dir, activation=activation, commit=False)
    return "\n".join([*stale, f"installed bundle {outcome.version} (key {outcome.key_id}) in slot {outcome.slot},"
                      f" pending until ArtifactCommit; current -> {outcome.slot} (was {outcome.previous or 'none'});"
                      f" health: {outcome.health}", *(f"note: {n}" for n in outcome.notes)])


def payload(api: Path) -> Path:
    """The one bundle file of the payload (FILES/files/*)."""
    folder = api / "files"
    try:
        found = sorted(folder.iterdir())
    except OSError as exc:
        raise BundleError(f"the artifact's payload directory {folder} cannot be read: {exc.strerror}",
                          hint="the module runs under Mender's client, which fills FILES/files before"
                               " ArtifactInstall") from exc
    kinds = [_kind(p) for p in found]
    if len(found) != 1 or kinds[0]:
        names = ", ".join(p.name + (f", {k}" if k else "") for p, k in zip(found, kinds)) or "nothing"
        raise BundleError(f"an {PAYLOAD_TYPE} artifact carries exactly one bundle file; this one holds {names}",
                          hint="make artifacts with: edge bundle pack --mender --device-type TYPE ...")
    return found[0]


def _kind(path: Path) -> str:
    """'' for a regular file (a link is not followed), else what it is."""
    try:
        mode = path.lstat().st_mode
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return "" if stat.S_ISREG(mode) else files.describe_mode(mode)


def artifact_version(api: Path) -> str:
    """The bundle version in the artifact's name (FILES/header/artifact_name, edge-bundle-<version>)."""
    path = api / "header" / "artifact_name"
    try:
        name = files.read_regular(path, NAME_BYTES).decode("utf-8").strip()
    except OSError as exc:
        raise _unnamed(path, str(exc.strerror)) from None
    except files.NotRegularFile as exc:
        raise _unnamed(path, f"it {exc}") from None
    except files.FileTooLarge as exc:
        raise _unnamed(path, f"it holds {exc}, more than {NAME_BYTES}") from None
    except UnicodeDecodeError:
        raise _unnamed(path, "it is not UTF-8 text") from None
    if not name.startswith(NAME_PREFIX) or name == NAME_PREFIX:
        raise BundleError(f"artifact name {name!r} is not {NAME_PREFIX}<version>: the commit cannot say which"
                          " bundle it makes permanent",
                          hint="make artifacts with: edge bundle pack --mender --device-type TYPE ...")
    return name[len(NAME_PREFIX):]


def _unnamed(path: Path, why: str) -> BundleError:
    return BundleError(f"cannot read the artifact's name from {path}: {why}",
                       hint="the module runs under Mender's client, which writes it")


# ------------------------------------------------------------------------------------------------------ pack

def artifact_path(bundle: Path) -> Path:
    """Where `edge bundle pack --mender` writes the artifact: beside the bundle, suffix .mender."""
    return bundle.with_suffix(".mender")


def check_device_types(models: Sequence[Path], device_types: Sequence[str]) -> None:
    """Refuse, before anything is packed, a device type that a model with plans has no plan for (ONNX-only models
    run on any type); so a fleet never gets an artifact its boards cannot run."""
    for name in device_types:
        if not _DEVICE_TYPE.fullmatch(name):
            raise BundleError(f"--device-type {name!r} is not a Mender device type (1 to 128 letters, digits, '.',"
                              " '_', '+' or '-')", hint="the board's /var/lib/mender/device_type says its type")
    for directory in models:
        try:
            manifest = repository.Manifest.load(directory)
        except EngineError:
            continue                  # archive.pack says what is wrong with it
        built = sorted({v.device.device_type for v in manifest.variants if v.device is not None})
        missing = [t for t in device_types if t not in built] if built else []
        if missing:
            shown = ", ".join(repr(t) if t else "'' (a board without Mender)" for t in built)
            raise BundleError(f"model {manifest.model} has no plan for device type {missing[0]}: its plans were"
                              f" built on device types {shown}",
                              note=f"{directory}; device types asked for: {', '.join(device_types)}",
                              hint=f"build the plans on a board of type {missing[0]} (edge build there records its"
                                   f" type), or leave {missing[0]} out")


def find_tool() -> str:
    """The path of mender-artifact; BundleError with the package to install where it is missing."""
    found = shutil.which(TOOL)
    if found is None:
        raise BundleError(f"--mender needs {TOOL}, which is not installed", hint=TOOL_HINT)
    return found


def write_artifact(bundle: Path, version: str, device_types: Sequence[str], out: Path, *, tool: str) -> None:
    """Wrap the signed bundle into a Mender artifact (module-image, type edge-bundle) at `out`, atomically, with
    `tool` (find_tool()). The bundle is gzip already: the artifact does not compress it again."""
    command = [tool, "--compression", "none", "write", "module-image", "-T", PAYLOAD_TYPE,
               "-n", f"{NAME_PREFIX}{version}", *(a for t in device_types for a in ("-t", t)), "-f", str(bundle)]
    try:
        with files.atomic_path(out, mode=0o644, durable=True) as tmp:
            tmp.unlink()                               # mender-artifact makes the file itself
            result = subprocess.run([*command, "-o", str(tmp)], capture_output=True, text=True,
                                    timeout=PACK_TIMEOUT_S, check=False)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise BundleError(f"{TOOL} failed (exit {result.returncode}) writing {out}",
                                  note=" / ".join(tail) or None, hint=f"run it by hand: {' '.join(command)} -o {out}")
    except subprocess.TimeoutExpired as exc:
        raise BundleError(f"{TOOL} did not finish writing {out} in {PACK_TIMEOUT_S:.0f} s",
                          hint="check the disk it writes to") from exc
    except OSError as exc:
        raise BundleError(f"cannot write {out}: {exc.strerror}", hint=files.write_hint(exc, out)) from exc
