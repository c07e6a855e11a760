"""Engine-bundle fixtures: repositories in a temp root, signed bundles, a stand-in daemon's status answers."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.deploy import archive, install, keys
from edge.engines import repository
from edge.wire.control import ControlServer

NO_HEALTH = install.Activation()


def make_repository(directory: Path, *, model: str = "det", seed: bytes = b"v1", big: int = 0,
                    device_type: str = "") -> Path:
    """An engine repository as `edge assets fetch` and `edge build` leave it: two ONNX variants, a plan for a
    Jetson with its sidecar, the manifest. `big`: bytes of random data in the fp32 variant; `device_type`: the
    Mender device type of the board that built the plan."""
    directory.mkdir(parents=True)
    files = {f"{model}.onnx": os.urandom(big) if big else b"fp32 " + seed, f"{model}.int8.qdq.onnx": b"int8 " + seed,
             f"plans/{model}.int8.orin.plan": b"plan " + seed}
    for rel, data in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    (directory / f"plans/{model}.int8.orin.plan.json").write_text('{"device": {}}')
    digest = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    device = repository.DeviceKey("NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "10.3.0.30", "8.7", "int8",
                                 device_type=device_type)
    repository.Manifest(directory, model, [
        repository.Variant("fp32", "onnx", f"{model}.onnx", digest[f"{model}.onnx"]),
        repository.Variant("int8", "onnx", f"{model}.int8.qdq.onnx", digest[f"{model}.int8.qdq.onnx"]),
        repository.Variant("int8", "plan", f"plans/{model}.int8.orin.plan", digest[f"plans/{model}.int8.orin.plan"],
                           device, source_sha256=digest[f"{model}.int8.qdq.onnx"]),
    ]).save()
    return directory


class Env:
    """A signing key the device trusts, a bundle root with bundle 1.0 active (slot a), and helpers."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.keys = keys.generate(tmp_path / "keys")
        self.trusted = tmp_path / "keys"
        self.root = tmp_path / "bundles"

    def bundle(self, version: str, *, seed: bytes | None = None, key: Path | None = None, big: int = 0) -> Path:
        source = make_repository(self.tmp / f"src-{version}" / "det", seed=(seed or version.encode()), big=big)
        out = self.tmp / f"{version}.bundle"
        archive.pack([source], key=key or self.keys.private, version=version, out=out)
        return out

    def install(self, bundle: Path | io.BufferedIOBase, activation: install.Activation = NO_HEALTH,
                **kwargs: Any) -> install.Outcome:
        return install.install(bundle, root=self.root, trusted_dir=self.trusted, activation=activation, **kwargs)

    def snapshot(self) -> tuple[str, dict[str, str]]:
        """`current`'s target and the sha256 of every file in the active slot."""
        active = self.root / os.readlink(self.root / "current")
        return os.readlink(self.root / "current"), {
            str(p.relative_to(active)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(active.rglob("*")) if p.is_file()}

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.name.startswith(".") and p.name != ".lock")

    def state(self) -> dict[str, Any]:
        """All of the root a command may change: `current`, every file of both slots (install.json included),
        committed.json, pending.json, leftovers."""
        link = self.root / "current"
        return {"current": os.readlink(link) if link.is_symlink() else None,
                "slots": {s: {str(p.relative_to(self.root / s)): hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in sorted((self.root / s).rglob("*")) if p.is_file()} for s in ("a", "b")},
                **{name: _marked(self.root / f"{name}.json") for name in ("committed", "pending")},
                "leftovers": self.leftovers()}


def _marked(path: Path) -> Any:
    """What `path` holds for a comparison: its bytes, where a link points, what a FIFO is, None when absent."""
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.exists():
        return None
    return path.read_bytes() if path.is_file() else ("not a file", stat.S_IFMT(path.stat().st_mode))


def damage(path: Path, content: str | bytes | Path) -> None:
    """Put `content` at `path`: text, bytes, a symbolic link to a Path, or a FIFO ("fifo")."""
    path.unlink(missing_ok=True)
    if isinstance(content, Path):
        path.symlink_to(content)
    elif content == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def rewrite(bundle: Path, out: Path, edit: Callable[[list[tuple[tarfile.TarInfo, bytes]]], None]) -> Path:
    """Copy a bundle's members through `edit` (which changes the list in place) into a new archive."""
    with tarfile.open(bundle, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]
    edit(members)
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            member.size = len(data) if member.isreg() else 0
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return out


def replace_member(name: str, data: bytes) -> Callable[[list[tuple[tarfile.TarInfo, bytes]]], None]:
    def edit(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members[:] = [(m, data if m.name == name else d) for m, d in members]
    return edit


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null ||"
                            " mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


NAMESPACES = _namespaces_work()


class StandIn:
    """What the daemon answers to `status`: `healthy` (each answer shows one more frame processed), `stuck` (no
    progress), `stopped` (its lane ended), `hung` (never answers until released)."""

    def __init__(self) -> None:
        self.mode = "healthy"
        self.uptime = 0.0
        self.processed = 10
        self.asked = 0
        self.release = threading.Event()

    def __call__(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        self.asked += 1
        if self.mode == "hung":
            self.release.wait(30)
        if self.mode == "healthy":
            self.processed += 1
        return {"version": "test", "uptime_s": self.uptime,
                "tasks": [{"task": "objects", "precision": "int8", "unavailable": {"fp16": "refused when made"}}],
                "lanes": [{"task": "objects", "camera": "front", "captured": 100, "processed": self.processed,
                           "running": self.mode != "stopped"}]}


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    """A StandIn daemon answering on a real control socket in `tmp_path`: it and the socket's endpoint."""
    stand_in = StandIn()
    endpoint = f"ipc://{tmp_path}/control.sock"
    server = ControlServer(endpoint, stand_in)
    server.start()
    try:
        yield stand_in, endpoint
    finally:
        stand_in.release.set()
        server.stop(5)
