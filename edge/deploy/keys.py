"""Ed25519 keys that sign engine bundles (the `cryptography` package).

    edge keys generate --out DIR [--name NAME]    DIR/NAME.key (PKCS#8 PEM, 0600) and DIR/NAME.pub (PEM, 0644)

A device trusts the public keys (`*.pub`) in a directory, /etc/edge/trusted-keys by default. A key is named by
its id: the first 16 hex digits of the sha256 of its 32 raw public bytes. A bundle's signature file says which
key signed it:

    bundle.sig    {"algorithm": "ed25519", "key_id": "3f2a9c...", "signature": "<base64 of 64 bytes>"}
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge import files
from edge.deploy.common import BundleError, check_private_dir

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
ALGORITHM = "ed25519"
MAX_KEY_FILE_BYTES = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out: Path, name: str = "edge-bundle") -> KeyPair:
    """A new key pair in `out` (made 0700 if missing). Existing files are never replaced."""
    if not _NAME.fullmatch(name):
        raise BundleError(f"key name {name!r} is not 1 to 64 letters, digits, '_', '.' or '-'",
                          hint="e.g. --name fleet-2026")
    private, public = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    existing = [str(p) for p in (private, public) if p.exists() or p.is_symlink()]
    if existing:
        raise BundleError(f"key files exist already: {', '.join(existing)}",
                          hint="keep them, move them away, or pass another --name")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    _create(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _create(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return KeyPair(private, public, key_id(key.public_key()))


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with `mode` from the start (O_EXCL: never over an existing file or link)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise BundleError(f"cannot create key file {path}: {exc.strerror}",
                          hint="pass an --out directory this user can write") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)          # the umask may have taken bits off


def load_private(path: Path) -> Ed25519PrivateKey:
    """The signing key in `path`; refused when group or others can read it (like ssh does)."""
    data = _read_key_file(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise BundleError(f"private key {path} is open to group or others", note=f"mode {mode:o}",
                          hint=f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key: {exc}",
                          hint="make one with `edge keys generate --out DIR`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is a {type(key).__name__}, not an Ed25519 key",
                          hint="make one with `edge keys generate --out DIR`")
    return key


def load_trusted(directory: Path) -> dict[str, Ed25519PublicKey]:
    """The public keys (`*.pub`) in `directory`, by key id. An unreadable or non-Ed25519 file is an error, and so
    is one that another user could change (_read_trusted)."""
    check_private_dir(directory, "trusted key directory")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            key = serialization.load_pem_public_key(_read_trusted(path))
        except ValueError as exc:
            raise BundleError(f"trusted key {path} is not a PEM public key: {exc}",
                              hint=f"replace it with a NAME{PUBLIC_SUFFIX} of `edge keys generate`, or remove it"
                              ) from exc
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError(f"trusted key {path} is a {type(key).__name__}, not an Ed25519 key",
                              hint="remove it; bundles are signed with Ed25519 keys of `edge keys generate`")
        keys[key_id(key)] = key
    if not keys:
        raise BundleError(f"no trusted keys (*{PUBLIC_SUFFIX}) in {directory}",
                          hint=f"install the public key of your signing key there (install -m 0644 NAME.pub"
                               f" {directory}/), or pass --keys DIR")
    return keys


def _read_trusted(path: Path) -> bytes:
    """A trusted key file: the file itself (no link), owned by root or this user and writable by no one else,
    since whoever can change it chooses which bundles this device runs."""
    hint = f"install the key file itself, owned by root, mode 0644: install -m 0644 NAME.pub {path.parent}/"
    try:
        info = path.lstat()
    except OSError as exc:
        raise BundleError(f"cannot read trusted key {path}: {exc.strerror}", hint=hint) from exc
    mode, user = stat.S_IMODE(info.st_mode), os.geteuid()
    if stat.S_ISLNK(info.st_mode):
        raise BundleError(f"trusted key {path} is a symbolic link: the key would be whatever file it points to",
                          note=f"it points to {_link_target(path)}", hint=f"{hint}, in place of the link")
    if info.st_uid not in (0, user):
        owners = "root" if user == 0 else f"root or this user (uid {user})"
        raise BundleError(f"trusted key {path} belongs to uid {info.st_uid}, not to {owners}: that user could put"
                          " their own key in it", note=f"mode {mode:o}", hint=f"chown root: {path}, or {hint}")
    if mode & 0o022:
        raise BundleError(f"trusted key {path} is writable by group or others: another user could put their own"
                          " key in it", note=f"mode {mode:o}, owner uid {info.st_uid}", hint=f"chmod go-w {path}")
    return _read_key_file(path, "trusted key", follow_symlinks=False)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"? ({exc.strerror})"


def _read_key_file(path: Path, what: str, *, follow_symlinks: bool = True) -> bytes:
    """At most MAX_KEY_FILE_BYTES of a regular file (edge.files.read_regular: a FIFO is refused, not waited on)."""
    hint = "a key file is a NAME.key or NAME.pub of `edge keys generate`"
    try:
        return files.read_regular(path, MAX_KEY_FILE_BYTES, follow_symlinks=follow_symlinks)
    except files.NotRegularFile as exc:
        raise BundleError(f"{what} {path} is not a key file", note=str(exc), hint=hint) from None
    except files.FileTooLarge as exc:
        raise BundleError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file",
                          note=str(exc), hint=hint) from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror}", hint=hint) from exc


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The signature file for `data`."""
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(data)).decode("ascii")}
    return (json.dumps(doc, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def signer(signature_file: bytes) -> str:
    """The key id a signature file names; BundleError when it is not a signature file."""
    return _parse_signature(signature_file)[0]


def verify(signature_file: bytes, data: bytes, trusted: dict[str, Ed25519PublicKey], *, trusted_dir: Path) -> str:
    """The id of the trusted key whose signature over `data` the signature file holds; BundleError when the key
    is not trusted or the signature does not match (the data or the signature was changed)."""
    kid, signature = _parse_signature(signature_file)
    key = trusted.get(kid)
    if key is None:
        raise BundleError(f"bundle is signed by key {kid}, which this device does not trust",
                          note=f"trusted in {trusted_dir}: {', '.join(sorted(trusted))}",
                          hint=f"sign it with a trusted key, or install that key's .pub file in {trusted_dir}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BundleError(f"bad signature: bundle.json does not match the signature of key {kid}",
                          note="the manifest or its signature was changed after signing, or damaged in transit",
                          hint="copy the bundle again from its source; if it still fails, pack it again") from None
    return kid


def _parse_signature(signature_file: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(signature_file.decode("utf-8"))
        kid, encoded = doc["key_id"], doc["signature"]
        if doc.get("algorithm") != ALGORITHM or not isinstance(kid, str) or not re.fullmatch(r"[0-9a-f]{16}", kid):
            raise ValueError(f"algorithm {doc.get('algorithm')!r}, key id {kid!r}")
        signature = base64.b64decode(encoded, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BundleError(f"bundle.sig is not an edge signature file: {exc!r:.200}",
                          hint="make bundles with `edge bundle pack`") from None
    if len(signature) != 64:
        raise BundleError(f"bad signature: {len(signature)} bytes, an Ed25519 signature has 64",
                          hint="make bundles with `edge bundle pack`")
    return kid, signature
