"""The bundle archive: pack engine repositories into one signed file, and read one back in a single bounded pass.

A bundle is a gzip-compressed tar: the signed manifest `bundle.json` and its signature `bundle.sig` first, then
the engine repositories' files, each listed in the manifest with its size and sha256. Reading never trusts the
archive: nothing past the manifest and its signature is taken before the signature is verified, then every
member must be a regular file (or a directory) with a safe relative path, listed, of the listed size and
sha256, within Limits. The format: docs/operations.md, "Bundle format"; the reader's checks: "What an install
does".
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.version import InvalidVersion, Version

from edge.deploy import keys
from edge.deploy.common import BundleError, utc_now
from edge.engines import repository
from edge.errors import EngineError
from edge.files import atomic_path

MANIFEST = "bundle.json"
SIGNATURE = "bundle.sig"
FORMAT = "edge-bundle"
SCHEMA = 1
CHUNK = 1 << 20
GiB = 1 << 30
HEADER_SLACK = 4096              # uncompressed bytes a member may take besides its data (headers, padding)
PACK_HINT = "make bundles with `edge bundle pack`; if this one was, copy it again from its source"
VERSION_HINT = "a bundle's version is a PEP 440 version that only increases, e.g. 2026.11.2"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what one bundle may make us read and write (defaults fit a few models with plans)."""

    archive_bytes: int = 16 * GiB      # compressed bytes read
    total_bytes: int = 16 * GiB        # sum of the files' sizes
    member_bytes: int = 8 * GiB        # one file
    members: int = 10_000              # files in the manifest
    manifest_bytes: int = 4 << 20      # bundle.json

    def head_bytes(self) -> int:
        """Uncompressed bytes read before the signature is checked: bundle.json, bundle.sig, their headers."""
        return self.manifest_bytes + keys.MAX_KEY_FILE_BYTES + 64 * 1024


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class BundleManifest:
    version: str
    created: str
    models: dict[str, list[dict[str, Any]]]
    device_keys: list[dict[str, Any]]
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema": SCHEMA, "version": self.version, "created": self.created,
                "models": self.models, "device_keys": self.device_keys,
                "files": [dataclasses.asdict(f) for f in self.files]}

    @classmethod
    def parse(cls, raw: bytes, limits: Limits) -> BundleManifest:
        """The manifest in `raw`; BundleError saying what is wrong with it."""
        try:
            data = json.loads(raw.decode("utf-8"))
            manifest = cls._from_json(data)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{MANIFEST} is malformed: {exc!r:.300}", hint=PACK_HINT) from None
        manifest.check(limits)
        return manifest

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> BundleManifest:
        if data["format"] != FORMAT or data["schema"] != SCHEMA:
            raise ValueError(f"format {data['format']!r} schema {data['schema']!r}, expected {FORMAT!r} {SCHEMA}")
        files = tuple(FileEntry(str(f["path"]), f["size"], str(f["sha256"])) for f in data["files"])
        models = {str(name): list(variants) for name, variants in data["models"].items()}
        return cls(str(data["version"]), str(data["created"]), models, list(data["device_keys"]), files)

    def check(self, limits: Limits) -> None:
        """Refuse what no packer makes and what is over the limits (the signature does not make it safe)."""
        version = version_problem(self.version)
        problems = [version] if version else []
        problems += [f"model name {name!r} is not a plain name" for name in self.models if not _MODEL.fullmatch(name)]
        problems += [p for entry in self.files for p in self._entry_problems(entry, limits)]
        paths = [f.path for f in self.files]
        problems += [f"{p!r} is listed twice" for p in sorted({p for p in paths if paths.count(p) > 1})]
        problems += [f"model {m} has no {m}/manifest.json" for m in self.models if f"{m}/manifest.json" not in paths]
        if problems:
            raise BundleError(f"{MANIFEST} is not valid: {problems[0]}", note="; ".join(problems[1:6]) or None,
                              hint=f"{VERSION_HINT}; pack it again with one" if version else PACK_HINT)
        if len(self.files) > limits.members or self.total_bytes > limits.total_bytes:
            raise BundleError(f"bundle is too large: {len(self.files)} files, {self.total_bytes} bytes",
                              note=f"limits: {limits.members} files, {limits.total_bytes} bytes",
                              hint="pack fewer models or variants per bundle")

    def _entry_problems(self, entry: FileEntry, limits: Limits) -> Iterator[str]:
        problem = path_problem(entry.path)
        if problem:
            yield f"file {entry.path!r}: {problem}"
        elif entry.path.split("/")[0] not in self.models:
            yield f"file {entry.path!r} is not in a model's directory ({', '.join(self.models) or 'no models'})"
        if not _SHA256.fullmatch(entry.sha256):
            yield f"file {entry.path!r}: sha256 {entry.sha256!r:.80} is not 64 hex digits"
        if not isinstance(entry.size, int) or isinstance(entry.size, bool) or entry.size < 0:
            yield f"file {entry.path!r}: size {entry.size!r:.40} is not a byte count"
        elif entry.size > limits.member_bytes:
            yield f"file {entry.path!r} of {entry.size} bytes is over the limit of {limits.member_bytes} per file"


def version_of(text: str) -> Version:
    """A bundle's version, ordered as PEP 440 orders it (1.10 > 1.9); BundleError for anything else."""
    problem = version_problem(text)
    if problem:
        raise BundleError(f"bundle {problem}", hint=VERSION_HINT)
    return Version(text)


def version_problem(text: str) -> str | None:
    """Why `text` is not a bundle version: a PEP 440 version of at most 64 letters, digits, '.', '_', '+', '-'."""
    try:
        if _VERSION.fullmatch(text) and Version(text):
            return None
    except InvalidVersion:
        pass
    return f"version {text!r:.80} is not a PEP 440 version of 1 to 64 letters, digits, '.', '_', '+' or '-'"


def path_problem(name: str) -> str | None:
    """Why `name` is not a safe relative path inside a bundle, else None."""
    if not name:
        return "empty name"
    if any(ord(c) < 32 or c == "\x7f" for c in name) or "\\" in name:
        return "control characters or backslashes in the name"
    if name.startswith("/"):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "path traversal ('..')"
    if "" in parts or "." in parts:
        return "not a normalized path (empty or '.' component)"
    if len(name) > 1024 or max(len(p.encode()) for p in parts) > 255:
        return "name too long"
    return None


@dataclasses.dataclass(frozen=True)
class Verified:
    manifest: BundleManifest
    key_id: str
    raw: bytes                  # bundle.json as signed
    signature: bytes            # bundle.sig


# ------------------------------------------------------------------------------------------------------ pack

def pack(models: list[Path], *, key: Path, version: str, out: Path) -> Verified:
    """Write a bundle of the engine repositories `models` to `out`, signed with the private key `key`."""
    version_of(version)
    private = keys.load_private(key)
    repos = [_repository(directory) for directory in models]
    names = [manifest.model for manifest, _ in repos]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BundleError(f"more than one repository of model {twice[0]}: {', '.join(map(str, models))}",
                          hint="pack one repository per model")
    files = sorted(((FileEntry(f"{manifest.model}/{rel}", size, digest), manifest.root / rel)
                    for manifest, listed in repos for rel, size, digest in listed), key=lambda f: f[0].path)
    variants = {m.model: [{"precision": v.precision, "format": v.format, "file": v.file} for v in m.variants]
                for m, _ in repos}
    device_keys = [{"model": m.model, "file": v.file, **v.device.to_json()}
                   for m, _ in repos for v in m.variants if v.device is not None]
    manifest = BundleManifest(version, utc_now(), variants, device_keys, tuple(entry for entry, _ in files))
    manifest.check(Limits())
    raw = (json.dumps(manifest.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    signature = keys.sign(private, raw)
    _write_archive(out, raw, signature, files)
    return Verified(manifest, keys.key_id(private.public_key()), raw, signature)


def _repository(directory: Path) -> tuple[repository.Manifest, list[tuple[str, int, str]]]:
    """An engine repository's manifest and its files (relative path, size, sha256), each variant checked against
    the manifest: its manifest.json, every variant, and the sidecar of every plan."""
    try:
        manifest = repository.Manifest.load(directory)
    except EngineError as exc:
        raise BundleError(f"cannot pack {directory}: {exc.what}", note=exc.note, hint=exc.hint) from None
    if not _MODEL.fullmatch(manifest.model):
        raise BundleError(f"cannot pack {directory}: model name {manifest.model!r} is not a plain name")
    files = [_file(directory, repository.MANIFEST)]
    for variant in manifest.variants:
        files.append(_file(directory, variant.file))
        if files[-1][2] != variant.sha256:
            raise BundleError(f"cannot pack {directory}: {variant.file} does not match its sha256 in the manifest",
                              note=f"{files[-1][2][:16]}... vs {variant.sha256[:16]}...",
                              hint="remake the variant (edge assets fetch --rebuild, edge build) or remove it from"
                                   " the manifest")
        if variant.format == "plan" and (directory / f"{variant.file}.json").is_file():
            files.append(_file(directory, f"{variant.file}.json"))
    return manifest, files


def _file(directory: Path, rel: str) -> tuple[str, int, str]:
    problem = path_problem(rel)
    if problem:
        raise BundleError(f"cannot pack {directory}: file {rel!r} in its manifest: {problem}")
    path = directory / rel
    try:
        return rel, path.stat().st_size, repository.sha256_file(path)
    except OSError as exc:
        raise BundleError(f"cannot pack {directory}: {rel}: {exc.strerror}",
                          hint="remake the variant or remove it from the manifest") from exc


def _write_archive(out: Path, raw: bytes, signature: bytes, files: list[tuple[FileEntry, Path]]) -> None:
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, raw), (SIGNATURE, signature)):
            tar.addfile(_member(name, len(data)), io.BytesIO(data))
        for entry, source in files:
            with open(source, "rb") as f:
                tar.addfile(_member(entry.path, entry.size), f)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, 0o644, tarfile.REGTYPE
    return info


# ------------------------------------------------------------------------------------------------------ read

class Sink(Protocol):
    """Where the files of a bundle go while it is read: nowhere (verify) or a staging directory (install)."""

    def prepare(self, manifest: BundleManifest) -> None: ...

    def write(self, entry: FileEntry, data: IO[bytes]) -> str: ...


def read(source: Path | io.BufferedIOBase, trusted: dict[str, Ed25519PublicKey], sink: Sink, *, trusted_dir: Path,
         limits: Limits | None = None, admit: Callable[[BundleManifest], None] | None = None) -> Verified:
    """Read a bundle from a path or an open binary stream, verifying it as the module doc says (in full:
    docs/operations.md, "What an install does", step 2); the files go to `sink`. `admit` sees the signed,
    checked manifest before any file does, and refuses the bundle by raising. BundleError says what is wrong."""
    name = str(source) if isinstance(source, Path) else "<stdin>"
    limits = limits or Limits()
    with _open(source) as raw:
        stream = _Inflate(raw, name, limits)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                verified = _read_members(tar, stream, trusted, sink, trusted_dir=trusted_dir, limits=limits,
                                         admit=admit)
            stream.finish()
            return verified
        except tarfile.TarError as exc:
            raise BundleError(f"bundle {name} is damaged or truncated: {exc}", note=f"{stream.raw_bytes} bytes read",
                              hint=PACK_HINT) from None


def _open(source: Path | io.BufferedIOBase) -> contextlib.AbstractContextManager[io.BufferedIOBase]:
    """The file at a path (closed after), or a stream the caller gave (left open)."""
    if not isinstance(source, Path):
        return contextlib.nullcontext(source)
    try:
        return open(source, "rb")
    except OSError as exc:
        raise BundleError(f"cannot read bundle {source}: {exc.strerror}") from exc


def _read_members(tar: tarfile.TarFile, stream: _Inflate, trusted: dict[str, Ed25519PublicKey], sink: Sink, *,
                  trusted_dir: Path, limits: Limits, admit: Callable[[BundleManifest], None] | None) -> Verified:
    members = iter(tar)
    raw = _small_member(tar, next(members, None), MANIFEST, limits.manifest_bytes)
    signature = _small_member(tar, next(members, None), SIGNATURE, keys.MAX_KEY_FILE_BYTES)
    kid = keys.verify(signature, raw, trusted, trusted_dir=trusted_dir)
    manifest = BundleManifest.parse(raw, limits)
    if admit is not None:
        admit(manifest)
    stream.allowance += manifest.total_bytes + (len(manifest.files) + 16) * HEADER_SLACK
    sink.prepare(manifest)
    expected = {entry.path: entry for entry in manifest.files}
    taken: set[str] = set()
    for member in members:
        entry = _expected_entry(member, expected, taken)
        if entry is not None:
            data = tar.extractfile(member)
            if data is None:
                raise BundleError(f"cannot read {member.name!r} in the archive", hint=PACK_HINT)
            digest = sink.write(entry, data)
            if digest != entry.sha256:
                raise BundleError(f"checksum mismatch: {entry.path} has sha256 {digest[:16]}..., the signed manifest"
                                  f" says {entry.sha256[:16]}...", note="the file was changed or damaged after signing",
                                  hint=PACK_HINT)
            taken.add(entry.path)
    missing = sorted(set(expected) - taken)
    if missing:
        raise BundleError(f"bundle is truncated or incomplete: {len(missing)} of {len(expected)} signed files are not"
                          " in the archive", note=f"missing: {', '.join(missing[:5])}", hint=PACK_HINT)
    return Verified(manifest, kid, raw, signature)


def _small_member(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, limit: int) -> bytes:
    """The content of the member that must come next (bundle.json, then bundle.sig)."""
    if member is None or member.name != name or not member.isreg():
        found = "the end of the archive" if member is None else f"{member.name!r}"
        raise BundleError(f"not an edge bundle: expected {name} next in the archive, found {found}", hint=PACK_HINT)
    if member.size > limit:
        raise BundleError(f"{name} of {member.size} bytes is over the limit of {limit} bytes", hint=PACK_HINT)
    data = tar.extractfile(member)
    content = data.read() if data is not None else b""
    if len(content) != member.size:
        raise BundleError(f"bundle is truncated inside {name}", hint=PACK_HINT)
    return content


def _expected_entry(member: tarfile.TarInfo, expected: dict[str, FileEntry], taken: set[str]) -> FileEntry | None:
    """The manifest's entry for a member (None for a directory); BundleError for anything unsafe or unsigned."""
    kind = _unsafe_kind(member)
    if kind:
        raise BundleError(f"the archive holds {kind}: bundles hold regular files only", note="nothing was extracted"
                          " outside the staging directory; the active bundle is unchanged", hint=PACK_HINT)
    problem = path_problem(member.name.rstrip("/") if member.isdir() else member.name)
    if problem:
        raise BundleError(f"unsafe path in the archive: {member.name!r:.200} ({problem})", note="nothing was extracted"
                          " outside the staging directory; the active bundle is unchanged", hint=PACK_HINT)
    if member.isdir():
        return None
    entry = expected.get(member.name)
    if entry is None or member.name in taken:
        why = "is not in the signed manifest" if entry is None else "comes twice"
        raise BundleError(f"file {member.name!r} in the archive {why}", hint=PACK_HINT)
    if member.size != entry.size:
        raise BundleError(f"checksum mismatch: {entry.path} is {member.size} bytes in the archive, the signed manifest"
                          f" says {entry.size}", hint=PACK_HINT)
    return entry


def _unsafe_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"a symbolic link {member.name!r:.200} -> {member.linkname!r:.200}"
    if member.islnk():
        return f"a hard link {member.name!r:.200} -> {member.linkname!r:.200}"
    if member.ischr() or member.isblk():
        return f"a device file {member.name!r:.200}"
    if not (member.isreg() or member.isdir()):
        return f"a special file {member.name!r:.200} (type {member.type!r})"
    return None


class _Inflate:
    """The uncompressed bytes of a gzip stream, for tarfile's stream mode. At most `archive_bytes` compressed bytes
    are read, and at most `allowance` uncompressed bytes given out: first only what bundle.json and bundle.sig
    need, then what the signed manifest lists. A stream that ends early, or does not inflate, is an error."""

    def __init__(self, raw: io.BufferedIOBase, name: str, limits: Limits) -> None:
        self._raw = raw
        self._name = name
        self._limits = limits
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self.raw_bytes = 0
        self.given = 0
        self.allowance = limits.head_bytes()

    def read(self, size: int = CHUNK) -> bytes:
        size = CHUNK if size < 0 else size
        while not self._pending and not self._inflate.eof:
            self._pending = self._decompress(self._inflate.unconsumed_tail or self._read_raw(), max(size, CHUNK))
        out, self._pending = self._pending[:size], self._pending[size:]
        self.given += len(out)
        if self.given > self.allowance:
            raise BundleError(f"bundle {self._name} inflates to more than its signed manifest lists",
                              note=f"over {self.allowance} bytes after {self.raw_bytes} compressed bytes",
                              hint=PACK_HINT)
        return out

    def finish(self) -> None:
        """Read what is left after the tar's end (its padding) to the end of the gzip stream, so that its CRC is
        checked and a copy cut short there is noticed too."""
        while self.read(CHUNK):
            pass

    def _read_raw(self) -> bytes:
        chunk = self._raw.read1(CHUNK)          # what is there: a pipe need not fill a whole chunk first
        self.raw_bytes += len(chunk)
        if self.raw_bytes > self._limits.archive_bytes:
            raise BundleError(f"bundle {self._name} is larger than the limit of {self._limits.archive_bytes} bytes",
                              hint="pack fewer models or variants per bundle")
        if not chunk:
            raise BundleError(f"bundle {self._name} is truncated: it ends after {self.raw_bytes} bytes, inside its"
                              " compressed stream", hint="copy it again; compare its size and sha256sum with the"
                                                         " source")
        return chunk

    def _decompress(self, data: bytes, size: int) -> bytes:
        try:
            return self._inflate.decompress(data, size)
        except zlib.error as exc:
            raise BundleError(f"bundle {self._name} is not a gzip archive or is damaged: {exc}",
                              note=f"after {self.raw_bytes} bytes", hint=PACK_HINT) from None


def hash_stream(data: IO[bytes], write: Callable[[bytes], None]) -> str:
    """Pass a member's bytes to `write`, returning their sha256."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: data.read(CHUNK), b""):
        digest.update(chunk)
        write(chunk)
    return digest.hexdigest()


class Discard:
    """The sink of `verify`: checks the files, keeps nothing."""

    def prepare(self, manifest: BundleManifest) -> None:
        return None

    def write(self, entry: FileEntry, data: IO[bytes]) -> str:
        return hash_stream(data, lambda chunk: None)


class Extract:
    """The sink of `install`: writes each file under `directory` (new, empty, ours), mode 0644, durably."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self, manifest: BundleManifest) -> None:
        free = shutil.disk_usage(self.directory).free
        if free < manifest.total_bytes:
            raise BundleError(f"not enough space to install bundle {manifest.version}: it needs"
                              f" {manifest.total_bytes} bytes, {self.directory.parent} has {free} free",
                              note="the inactive slot keeps its bundle until the new one is complete",
                              hint=f"free space on that filesystem (df -h {self.directory.parent}), then install"
                                   " again")

    def write(self, entry: FileEntry, data: IO[bytes]) -> str:
        path = self.directory / entry.path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                digest = hash_stream(data, lambda chunk: _write_all(fd, chunk))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        except OSError as exc:
            raise _write_error(exc, path) from exc
        return digest

    def add(self, name: str, data: bytes) -> None:
        """Write a file of the install's own (bundle.json, bundle.sig) like a bundle's file."""
        self.write(FileEntry(name, len(data), ""), io.BytesIO(data))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_error(exc: OSError, path: Path) -> BundleError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BundleError(f"disk full while extracting {path.name}: {exc.strerror}",
                           note=f"into {path.parent}; the partial copy is removed, the active bundle is unchanged",
                           hint="free space on that filesystem (df -h), then install again")
    return BundleError(f"cannot write {path}: {exc.strerror}", hint="check the bundle root's filesystem and owner")
