"""Engine bundles (edge.deploy): real engine repositories in a temp root, real tar archives, real Ed25519 keys, a real
control socket with a stand-in daemon behind it. Every failure is injected into a root with an active bundle, and
each test checks the error and that `current` and the active slot's files are exactly as before."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.deploy import archive, health, install, keys
from edge.deploy.common import BundleError
from edge.deploy.slots import Store
from edge.engines import repository
from tests.conftest import wait_for
from tests.support.bundles import NAMESPACES, NO_HEALTH, Env, StandIn, make_repository, replace_member, rewrite, serving
from tests.support.daemon import edge_cmd, env

# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture
def env1(tmp_path: Path) -> Env:
    """Bundle 1.0 installed and active in slot a."""
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    return e


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
           link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data


def refused(e: Env, bundle: Path | io.BufferedIOBase, match: str, **kwargs: Any) -> BundleError:
    """Install `bundle` into e's root: it must fail with `match`, leaving the active bundle and no leftovers."""
    before = e.snapshot()
    with pytest.raises(BundleError, match=match) as caught:
        e.install(bundle, **kwargs)
    assert e.snapshot() == before
    assert e.leftovers() == []
    return caught.value


# ------------------------------------------------------------------------------------------------ keys, pack

def test_keys_are_written_private_and_never_replaced(tmp_path: Path) -> None:
    pair = keys.generate(tmp_path / "k", "fleet")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert keys.key_id(keys.load_private(pair.private).public_key()) == pair.key_id
    assert list(keys.load_trusted(tmp_path / "k")) == [pair.key_id]
    with pytest.raises(BundleError, match="exist already"):
        keys.generate(tmp_path / "k", "fleet")
    pair.private.chmod(0o644)
    with pytest.raises(BundleError, match="open to group or others") as caught:
        keys.load_private(pair.private)
    assert "chmod 600" in caught.value.render()


def test_a_trusted_key_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    e = Env(tmp_path)
    bundle = e.bundle("1.0")
    e.trusted.chmod(0o777)
    with pytest.raises(BundleError, match="trusted key directory .* is writable by group or others"):
        install.verify(bundle, trusted_dir=e.trusted)


def test_pack_lists_every_file_with_its_sha256_and_the_plans_device_key(tmp_path: Path) -> None:
    e = Env(tmp_path)
    verified = install.verify(e.bundle("1.0"), trusted_dir=e.trusted)
    manifest = verified.manifest
    assert verified.key_id == e.keys.key_id and manifest.version == "1.0"
    assert [f.path for f in manifest.files] == ["det/det.int8.qdq.onnx", "det/det.onnx", "det/manifest.json",
                                                "det/plans/det.int8.orin.plan", "det/plans/det.int8.orin.plan.json"]
    source = tmp_path / "src-1.0" / "det"
    assert all(f.sha256 == repository.sha256_file(source / f.path[4:]) for f in manifest.files)
    assert manifest.device_keys == [{"model": "det", "file": "plans/det.int8.orin.plan", "board":
                                     "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "tensorrt": "10.3.0.30",
                                     "sm": "8.7", "precision": "int8", "input_shapes": {},
                                     "device_type": ""}]


def test_pack_refuses_a_repository_whose_variant_does_not_match_its_manifest(tmp_path: Path) -> None:
    e = Env(tmp_path)
    source = make_repository(tmp_path / "det")
    (source / "det.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="det.onnx does not match its sha256 in the manifest"):
        archive.pack([source], key=e.keys.private, version="1.0", out=tmp_path / "x.bundle")
    assert not (tmp_path / "x.bundle").exists()


# ------------------------------------------------------------------------------------------------ the slots

def test_install_fills_the_inactive_slot_and_switches_current(env1: Env) -> None:
    e = env1
    assert os.readlink(e.root / "current") == "a"
    outcome = e.install(e.bundle("2.0"))
    assert (outcome.slot, outcome.previous, outcome.version, outcome.key_id) == ("b", "a", "2.0", e.keys.key_id)
    assert os.readlink(e.root / "current") == "b"
    assert (e.root / "current/det/det.onnx").read_bytes() == b"fp32 2.0"
    assert (e.root / "a/det/det.onnx").read_bytes() == b"fp32 1.0"        # the previous bundle stays for rollback
    # the daemon's side: the config's engines: <root>/current/det resolves through the link
    resolved = repository.resolve(repository.Manifest.load(e.root / "current/det"), "int8", device=None,
                                  allow_onnx=True)
    assert resolved.path == e.root / "current/det/det.int8.qdq.onnx"
    third = e.install(e.bundle("3.0"))                                      # A/B: the inactive slot is replaced
    assert (third.slot, os.readlink(e.root / "current")) == ("a", "a")
    assert (e.root / "a/det/det.onnx").read_bytes() == b"fp32 3.0" and e.leftovers() == []


def test_rollback_activate_and_list(env1: Env) -> None:
    e = env1
    e.install(e.bundle("2.0"))
    listing = install.list_slots(e.root)
    assert listing["current"] == "b"
    assert [(s["slot"], s["version"], s["key_id"], s["current"], s["health"]) for s in listing["slots"]] == [
        ("a", "1.0", e.keys.key_id, False, "not checked"), ("b", "2.0", e.keys.key_id, True, "not checked")]
    assert listing["slots"][0]["models"] == {"det": ["fp32", "int8"]}
    back = install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert (back.slot, back.version, os.readlink(e.root / "current")) == ("a", "1.0", "a")
    again = install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert (again.slot, again.version, os.readlink(e.root / "current")) == ("b", "2.0", "b")
    with pytest.raises(BundleError, match="slot b is active already"):
        install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    text = install.describe(install.list_slots(e.root))
    assert "current -> b" in text
    assert "plans for: NVIDIA Jetson AGX Orin Developer Kit L4T 36.4.3 TensorRT 10.3.0.30" in text


def test_rollback_needs_a_previous_bundle(env1: Env) -> None:
    with pytest.raises(BundleError, match="nothing to roll back to: slot b is empty"):
        install.rollback(root=env1.root, trusted_dir=env1.trusted, activation=NO_HEALTH)
    assert os.readlink(env1.root / "current") == "a"


def test_activate_verifies_the_slot_again(env1: Env) -> None:
    e = env1
    e.install(e.bundle("2.0"))
    install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    before = e.snapshot()
    (e.root / "b/det/det.onnx").chmod(0o644)
    (e.root / "b/det/det.onnx").write_bytes(b"fp32 2.X")
    with pytest.raises(BundleError, match="slot b is not intact: det/det.onnx has sha256"):
        install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert e.snapshot() == before


def test_one_command_at_a_time(env1: Env) -> None:
    e = env1
    bundle = e.bundle("2.0")
    with Store(e.root).lock():
        refused(e, bundle, f"another edge bundle command is using {e.root}")
    e.install(bundle)


def test_the_bundle_can_come_on_standard_input(env1: Env) -> None:
    e = env1
    data = e.bundle("2.0").read_bytes()
    result = subprocess.run(edge_cmd("bundle", "install", "-", "--root", str(e.root), "--keys", str(e.trusted),
                                     "--no-health"), input=data, capture_output=True, env=env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"installed bundle 2.0" in result.stdout and os.readlink(e.root / "current") == "b"


# ------------------------------------------------------------------------------------------------ refused bundles

def test_bad_signature(env1: Env) -> None:
    e = env1
    original = e.bundle("2.0")
    with tarfile.open(original, "r:gz") as tar:
        manifest = tar.extractfile(archive.MANIFEST).read()
    tampered = rewrite(original, e.tmp / "bad.bundle", replace_member(archive.MANIFEST,
                                                                      manifest.replace(b'"2.0"', b'"2.1"')))
    error = refused(e, tampered, f"bad signature: bundle.json does not match the signature of key {e.keys.key_id}")
    assert "copy the bundle again" in error.render()


def test_unknown_key(env1: Env) -> None:
    e = env1
    stranger = keys.generate(e.tmp / "stranger")
    error = refused(e, e.bundle("2.0", key=stranger.private),
                    f"bundle is signed by key {stranger.key_id}, which this device does not trust")
    assert e.keys.key_id in error.render()


@pytest.mark.parametrize("data, match", [
    (b"fp32 2.X", "checksum mismatch: det/det.onnx has sha256"),
    (b"fp32 2.0 and more", "checksum mismatch: det/det.onnx is 17 bytes in the archive, the signed manifest says 8"),
], ids=["content", "size"])
def test_checksum_mismatch(env1: Env, data: bytes, match: str) -> None:
    e = env1
    refused(e, rewrite(e.bundle("2.0"), e.tmp / "bad.bundle", replace_member("det/det.onnx", data)), match)


@pytest.mark.parametrize("keep", [0, 5, 0.5, -8, -1], ids=["empty", "in-gzip-header", "half", "no-trailer",
                                                           "last-byte"])
def test_truncated_archive(env1: Env, keep: float) -> None:
    e = env1
    data = e.bundle("2.0", big=200_000).read_bytes()
    cut = e.tmp / "cut.bundle"
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    refused(e, cut, "truncated|damaged")


def test_a_signed_file_missing_from_the_archive(env1: Env) -> None:
    e = env1

    def drop(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members[:] = [(m, d) for m, d in members if m.name != "det/plans/det.int8.orin.plan"]
    error = refused(e, rewrite(e.bundle("2.0"), e.tmp / "short.bundle", drop),
                    "truncated or incomplete: 1 of 5 signed files are not in the archive")
    assert "det/plans/det.int8.orin.plan" in error.render()


@pytest.mark.parametrize("bad, match", [
    (member("../evil", b"x"), r"unsafe path in the archive: '../evil' \(path traversal"),
    (member("det/../../evil", b"x"), r"unsafe path .* \(path traversal"),
    (member("/tmp/evil", b"x"), r"unsafe path in the archive: '/tmp/evil' \(absolute path\)"),
    (member("det/link", kind=tarfile.SYMTYPE, link="../../evil"), "a symbolic link 'det/link' -> '../../evil'"),
    (member("det/abs", kind=tarfile.SYMTYPE, link="/etc/passwd"), "a symbolic link 'det/abs' -> '/etc/passwd'"),
    (member("det/hard", kind=tarfile.LNKTYPE, link="../evil"), "a hard link 'det/hard' -> '../evil'"),
    (member("det/null", kind=tarfile.CHRTYPE), "a device file 'det/null'"),
    (member("det/fifo", kind=tarfile.FIFOTYPE), "a special file 'det/fifo'"),
    (member("det/extra", b"x"), "file 'det/extra' in the archive is not in the signed manifest"),
], ids=["dotdot", "inner-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink", "device", "fifo", "unsigned"])
def test_unsafe_members_are_refused_before_anything_is_written(env1: Env, bad: tuple[tarfile.TarInfo, bytes],
                                                               match: str) -> None:
    e = env1

    def insert(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members.insert(2, bad)                  # right after the signed manifest and its signature
    refused(e, rewrite(e.bundle("2.0"), e.tmp / "evil.bundle", insert), match)
    assert not (e.tmp / "evil").exists() and not (e.root / "evil").exists() and not Path("/tmp/evil").exists()


def signed(e: Env, files: dict[str, bytes], out: Path) -> Path:
    """A bundle of `files` (model det) with a manifest signed by the trusted key, whatever the files are: what a
    broken packer could make."""
    manifest = archive.BundleManifest("2.0", "now", {"det": [{"precision": "fp32", "format": "onnx",
                                                              "file": "det.onnx"}]}, [], tuple(
        archive.FileEntry(path, len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()))
    raw = json.dumps(manifest.to_json()).encode()
    signature = keys.sign(keys.load_private(e.keys.private), raw)
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [member(archive.MANIFEST, raw), member(archive.SIGNATURE, signature),
                           *(member(path, data) for path, data in files.items())]:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_a_signed_manifest_with_a_traversal_path_is_refused(env1: Env) -> None:
    """Signed by a trusted key and still refused: a packer never lists such a path."""
    e = env1
    forged = signed(e, {"det/manifest.json": b"{}", "det/../../evil": b"x"}, e.tmp / "forged.bundle")
    refused(e, forged, r"bundle.json is not valid: file 'det/../../evil': path traversal")


def test_a_model_whose_manifest_names_files_the_bundle_lacks_is_refused(env1: Env) -> None:
    e = env1
    source = make_repository(e.tmp / "src" / "det")
    files = {"det/manifest.json": (source / "manifest.json").read_bytes(), "det/det.onnx": b"fp32 v1"}
    refused(e, signed(e, files, e.tmp / "partial.bundle"),
            "model det: variant det.int8.qdq.onnx is not in the bundle as its manifest says")
    refused(e, signed(e, {"det/manifest.json": b"{}"}, e.tmp / "empty.bundle"),
            "model det in the bundle is not a usable engine repository")


def test_not_a_bundle(env1: Env) -> None:
    e = env1
    plain = e.tmp / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.addfile(*member("README", b"hello"))
    refused(e, plain, "not an edge bundle: expected bundle.json next in the archive, found 'README'")
    text = e.tmp / "text.bundle"
    text.write_bytes(b"not gzip at all" * 100)
    refused(e, text, "is not a gzip archive or is damaged")


@pytest.mark.parametrize("limits, match", [
    (archive.Limits(member_bytes=100_000), "file 'det/det.onnx' of 200000 bytes is over the limit of 100000"),
    (archive.Limits(total_bytes=150_000), r"bundle is too large: 5 files, 2009\d\d bytes"),
    (archive.Limits(members=4), "bundle is too large: 5 files"),
    (archive.Limits(archive_bytes=100_000), "is larger than the limit of 100000 bytes"),
], ids=["member", "total", "members", "archive"])
def test_oversized_bundles_are_refused(env1: Env, limits: archive.Limits, match: str) -> None:
    e = env1
    refused(e, e.bundle("2.0", big=200_000), match, limits=limits)


def test_an_archive_that_inflates_past_what_is_signed_is_refused(env1: Env) -> None:
    """A pax header of 64 MiB (compressed to some 64 KiB) before the manifest: refused at a few MiB, not read
    into memory whole."""
    e = env1

    def bomb(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        members[0][0].pax_headers = {"comment": "a" * (64 << 20)}
    bundle = rewrite(e.bundle("2.0"), e.tmp / "bomb.bundle", bomb)
    assert bundle.stat().st_size < 1 << 20
    refused(e, bundle, "inflates to more than its signed manifest lists")


def test_disk_full_while_extracting(env1: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from a write in the middle of a file, faked: CI machines may not allow the tmpfs of the next test."""
    e = env1
    writes = []

    def full(fd: int, data: bytes) -> None:
        writes.append(len(data))
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)
    monkeypatch.setattr(archive, "_write_all", full)
    error = refused(e, e.bundle("2.0", big=3 << 20), "disk full while extracting det.onnx: No space left on device")
    assert "free space on that filesystem" in error.render() and len(writes) == 2


# ------------------------------------------------------------------------------------------------ a real full disk

def in_small_tmpfs(e: Env, size: str, first: Path, second: Path) -> str:
    """In a user and mount namespace: a tmpfs of `size` as the bundle root's filesystem; install `first`, then
    `second` (to fail), then list and hash the active slot. The output of all of it."""
    edge = " ".join(edge_cmd())
    hashes = f"find {e.root}/current/ -type f | sort | xargs sha256sum"
    script = f"""set -u
exec 2>&1
mount -t tmpfs -o size={size},mode=0755 tmpfs {e.root}
{edge} bundle install {first} --root {e.root} --keys {e.trusted} --no-health || exit 9
{hashes} > {e.tmp}/before.txt
{edge} bundle install {second} --root {e.root} --keys {e.trusted} --no-health
echo "second install: exit $?"
{edge} bundle list --root {e.root}
{hashes} | diff - {e.tmp}/before.txt && echo "active slot unchanged"
ls -A {e.root}
"""
    e.root.mkdir()
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env(),
                            timeout=120)
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.skipif(not NAMESPACES, reason="needs unshare -rm and tmpfs mounts in a user namespace")
def test_a_real_full_disk_while_extracting(tmp_path: Path) -> None:
    """Many small files: the byte count passes the free-space check, but each takes a whole page of the tmpfs."""
    e = Env(tmp_path)
    source = make_repository(tmp_path / "many" / "det", seed=b"many")
    manifest = repository.Manifest.load(source)
    for i in range(60):
        (source / f"part{i}.onnx").write_bytes(b"x" * 100)
        manifest.put(repository.Variant(f"p{i}", "onnx", f"part{i}.onnx", hashlib.sha256(b"x" * 100).hexdigest()))
    manifest.save()
    many = tmp_path / "many.bundle"
    archive.pack([source], key=e.keys.private, version="2.0", out=many)
    out = in_small_tmpfs(e, "160k", e.bundle("1.0"), many)
    assert "disk full while extracting" in out and "second install: exit 1" in out
    assert "active slot unchanged" in out and "* a  1.0" in out
    assert ".incoming" not in out.split("active slot unchanged")[1]


@pytest.mark.skipif(not NAMESPACES, reason="needs unshare -rm and tmpfs mounts in a user namespace")
def test_not_enough_space_is_refused_before_extracting(tmp_path: Path) -> None:
    e = Env(tmp_path)
    out = in_small_tmpfs(e, "256k", e.bundle("1.0"), e.bundle("2.0", big=400_000))
    assert "not enough space to install bundle 2.0: it needs 4009" in out and "second install: exit 1" in out
    assert "active slot unchanged" in out and "* a  1.0" in out


# ------------------------------------------------------------------------------------------------ a crash

def test_a_crash_mid_install_leaves_the_active_bundle_and_is_cleaned_up(env1: Env) -> None:
    """The install reads the bundle from a pipe; it is killed (SIGKILL) while it extracts a file. The active
    bundle is intact, `list` removes the staging directory, and the next install works."""
    e = env1
    bundle = e.bundle("2.0", big=4 << 20).read_bytes()
    before = e.snapshot()
    pipe = e.tmp / "pipe"
    os.mkfifo(pipe)
    proc = subprocess.Popen(edge_cmd("bundle", "install", str(pipe), "--root", str(e.root), "--keys", str(e.trusted),
                                     "--no-health"), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(pipe, "wb") as writer:
            writer.write(bundle[:2 << 20])
            writer.flush()
            partial = wait_for(lambda: [p for p in e.root.glob(".incoming-*/det/det.onnx") if p.stat().st_size],
                               timeout=30, what="a partly extracted file")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < partial[0].stat().st_size < 4 << 20
    assert e.snapshot() == before and e.leftovers() == [partial[0].parents[1].name]
    listed = subprocess.run(edge_cmd("bundle", "list", "--root", str(e.root)), capture_output=True, text=True,
                            env=env(), timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"removed what an interrupted command left: {partial[0].parents[1].name}" in listed.stdout
    assert e.leftovers() == [] and e.snapshot() == before
    assert e.install(e.bundle("3.0")).slot == "b"


# ------------------------------------------------------------------------------------------------ health

@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    with serving(tmp_path) as served:
        yield served


def checked(endpoint: str, timeout_s: float = 10.0, restart: list[str] | None = None) -> install.Activation:
    return install.Activation(restart=restart, health=health.HealthCheck(endpoint, timeout_s=timeout_s,
                                                                         interval_s=0.01))


def test_a_healthy_daemon_keeps_the_new_bundle(env1: Env, daemon: tuple[StandIn, str]) -> None:
    e, endpoint = env1, daemon[1]
    outcome = e.install(e.bundle("2.0"), checked(endpoint))
    assert outcome.slot == "b" and os.readlink(e.root / "current") == "b"
    assert "healthy after" in outcome.health and "objects/front +" in outcome.health
    assert "unavailable: objects fp16: refused when made" in outcome.health
    assert "systemctl restart edge-runtime" in outcome.health          # no --restart: the operator is told
    assert Store(e.root).record("b").health == "ok"


@pytest.mark.parametrize("mode, match", [
    ("stuck", r"the daemon was not healthy within 1 s: no frame processed since the first answer by objects/front"
              r" \(captured 100, processed 10\)"),
    ("stopped", r"the daemon's lane\(s\) stopped: objects/front"),
    ("hung", r"the daemon was not healthy within 1 s: no status reply \(no reply from the edge daemon"),
], ids=["stuck", "stopped", "hung"])
def test_an_unhealthy_daemon_rolls_back(env1: Env, daemon: tuple[StandIn, str], mode: str, match: str) -> None:
    e, (stand_in, endpoint) = env1, daemon
    stand_in.mode = mode
    error = refused(e, e.bundle("2.0"), "bundle 2.0 in slot b failed: " + match,
                    activation=checked(endpoint, timeout_s=1.0))
    assert "rolled back: current -> a again" in error.render()
    assert Store(e.root).record("b").health.startswith("failed: ")
    with pytest.raises(BundleError, match="slot b \\(bundle 2.0\\) failed its last health check"):
        install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH, force=True).slot == "b"


def _install_waiting_on(e: Env, stand_in: StandIn, endpoint: str) -> subprocess.Popen[str]:
    """`edge bundle install` of bundle 2.0 as a process, once it has switched to slot b and asked the daemon for its
    health (killed if it does not get there)."""
    proc = subprocess.Popen(edge_cmd("bundle", "install", str(e.bundle("2.0")), "--root", str(e.root), "--keys",
                                     str(e.trusted), "--control", endpoint, "--health-timeout", "60"),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.readlink(e.root / "current") == "b" and stand_in.asked, timeout=30,
                 what="the install to switch and ask the daemon")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def test_a_hangup_during_the_health_check_switches_back(env1: Env, daemon: tuple[StandIn, str]) -> None:
    """The terminal (or an ssh -t) goes while the install waits for the daemon: SIGHUP ends it through the switch
    back, never with `current` left on a bundle nobody checked."""
    e, (stand_in, endpoint) = env1, daemon
    stand_in.mode = "stuck"
    before = e.snapshot()
    proc = _install_waiting_on(e, stand_in, endpoint)
    try:
        proc.send_signal(signal.SIGHUP)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGHUP
    assert e.snapshot() == before and e.leftovers() == []
    assert Store(e.root).record("b").health == "failed: interrupted (SystemExit)"


def test_a_kill_during_the_health_check_is_flagged_by_list(env1: Env, daemon: tuple[StandIn, str]) -> None:
    """SIGKILL (or a power cut) between the switch and the end of the check: nothing can switch back then. The
    slot stays `pending`, `list` says so, and `rollback` returns to the bundle before."""
    e, (stand_in, endpoint) = env1, daemon
    stand_in.mode = "stuck"
    before = e.snapshot()
    proc = _install_waiting_on(e, stand_in, endpoint)
    proc.kill()
    proc.communicate()
    notes = install.list_slots(e.root)["notes"]
    assert any("slot b is current but its health was never checked" in note for note in notes)
    assert install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH).slot == "a"
    assert e.snapshot() == before and e.leftovers() == []


def test_no_daemon_listening_rolls_back(env1: Env, tmp_path: Path) -> None:
    e = env1
    error = refused(e, e.bundle("2.0"), "not healthy within 0.5 s: no status reply \\(cannot reach the edge daemon:"
                                        " nothing listens", activation=checked(f"ipc://{tmp_path}/none.sock", 0.5))
    assert "journalctl -u edge-runtime" in error.render()


def test_the_first_install_that_fails_leaves_no_current(tmp_path: Path) -> None:
    e = Env(tmp_path)
    with pytest.raises(BundleError, match="rolled back: `current` removed again"):
        e.install(e.bundle("1.0"), checked(f"ipc://{tmp_path}/none.sock", 0.2))
    assert not (e.root / "current").exists() and not (e.root / "current").is_symlink()


def test_restart_then_a_daemon_started_before_it_does_not_count(env1: Env, daemon: tuple[StandIn, str]) -> None:
    """With a restart command, the answer must come from a daemon younger than the restart; on failure the
    command runs again after the switch back, so the daemon runs the previous bundle."""
    e, (stand_in, endpoint) = env1, daemon
    log = e.tmp / "restarts.log"
    restart = ["sh", "-c", f'readlink {e.root}/current >> {log}']
    stand_in.uptime = 1e6
    error = refused(e, e.bundle("2.0"), "the daemon answering has run for 1000000.0 s: it started before the restart",
                    activation=checked(endpoint, 0.5, restart))
    assert log.read_text().split() == ["b", "a"]                 # restarted on the new bundle, then on the old one
    assert "restarted on it, but it is not healthy either" in error.render()
    stand_in.uptime = 0.0
    outcome = e.install(e.bundle("3.0"), checked(endpoint, 5.0, restart))
    assert outcome.slot == "b" and "systemctl" not in outcome.health and log.read_text().split() == ["b", "a", "b"]


def test_a_failing_restart_rolls_back_and_restarts_on_the_previous_bundle(env1: Env,
                                                                          daemon: tuple[StandIn, str]) -> None:
    e, endpoint = env1, daemon[1]
    log = e.tmp / "restarts.log"
    restart = ["sh", "-c", f'readlink {e.root}/current >> {log}; [ "$(readlink {e.root}/current)" = a ] ||'
                           ' { echo "Job for edge-runtime.service failed" >&2; exit 1; }']
    error = refused(e, e.bundle("2.0"), "restarting the daemon failed: sh -c .* exited 1",
                    activation=checked(endpoint, 5.0, restart))
    assert "Job for edge-runtime.service failed" in error.render()
    assert "restarted on it: healthy after" in error.render() and log.read_text().split() == ["b", "a"]


def test_the_daemon_runs_a_bundle_through_current_and_passes_the_check(demo, tmp_path: Path) -> None:
    """The real daemon: the demo's engine repository packed, installed, named as <root>/current/yolov3-tiny in the
    config; a second install's health check asks this daemon's control socket and finds its lane processing."""
    e = Env(tmp_path)
    bundle = tmp_path / "demo.bundle"
    archive.pack([demo.engines], key=e.keys.private, version="2026.11.1", out=bundle)
    e.install(bundle)
    control = f"ipc://{tmp_path}/control.sock"
    text = (f"version: 1\ncameras:\n  - id: front\n    uri: test://bars?size=320x240&fps=20\ntasks:\n"
            f"  - name: objects\n    type: detector\n    engines: {e.root}/current/yolov3-tiny\n    precision: fp32\n"
            f"    cameras: [front]\n    threads: 1\noutput:\n  results: ipc://{tmp_path}/r.sock\n"
            f"control:\n  endpoint: {control}\nsupervisor:\n  telemetry: none\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}))
    stop = threading.Event()
    service.start(stop)
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        assert service.tasks["objects"].active().path == e.root / "current/yolov3-tiny/yolov3-tiny.onnx"
        outcome = e.install(bundle, checked(control, timeout_s=60))
    finally:
        stop.set()
        runner.join(30)
        service.stop()
    assert outcome.slot == "b" and "healthy after" in outcome.health and "objects/front +" in outcome.health


# ------------------------------------------------------------------------------------------------ the command

def test_cli_errors_are_three_part_and_exit_1(env1: Env) -> None:
    e = env1
    stranger = keys.generate(e.tmp / "stranger")
    result = subprocess.run(edge_cmd("bundle", "install", str(e.bundle("2.0", key=stranger.private)), "--root",
                                     str(e.root), "--keys", str(e.trusted), "--no-health"),
                            capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"edge bundle: error: bundle is signed by key {stranger.key_id}")
    assert "\nNote: trusted in" in result.stderr and "\nHint: sign it with a trusted key" in result.stderr
