"""edge/files.py: atomic writes (whole or not at all, the mode, durable) and the private-directory check."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edge import files


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["manifest.json"]
    with files.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not target.read_text() == "new"
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["manifest.json"]


def test_atomic_path_gives_a_normal_new_files_mode_or_the_one_asked(tmp_path: Path) -> None:
    with files.atomic_path(tmp_path / "plain") as tmp:
        tmp.write_bytes(b"x")
    with files.atomic_path(tmp_path / "record.json", mode=0o640, durable=True) as tmp:
        tmp.write_bytes(b"{}")
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "record.json").read_bytes() == b"{}"


def test_a_private_directory_passes_and_a_missing_one_is_the_callers_to_judge(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    files.check_private_dir(ours, "socket directory", owners=(os.geteuid(),))
    with pytest.raises(FileNotFoundError):
        files.check_private_dir(tmp_path / "missing", "socket directory", owners=None)


def test_a_directory_another_user_could_change_is_refused_with_the_rule(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(files.NotPrivate, match=f"^trusted key directory {shared} is writable by group or others") \
            as caught:
        files.check_private_dir(shared, "trusted key directory", owners=None)
    assert caught.value.note == "mode 1777"
    (tmp_path / "link").symlink_to(shared)
    with pytest.raises(files.NotPrivate, match="link is not a plain directory but a symbolic link$"):
        files.check_private_dir(tmp_path / "link", "bundle root", owners=None)
    (tmp_path / "file").write_text("")
    with pytest.raises(files.NotPrivate, match="file is not a plain directory but a regular file$"):
        files.check_private_dir(tmp_path / "file", "bundle root", owners=None)


def test_an_owner_outside_the_allowed_uids_is_named(tmp_path: Path) -> None:
    user = os.geteuid()
    other = user + 1
    with pytest.raises(files.NotPrivate, match=rf"belongs to uid {user}, not to uid {other}$"):
        files.check_private_dir(tmp_path, "bundle root", owners=(other,))
    if user != 0:
        with pytest.raises(files.NotPrivate, match=rf"belongs to uid {user}, not to root$"):
            files.check_private_dir(tmp_path, "bundle root", owners=(0,))


def test_the_umask_is_read_without_setting_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """os.umask() sets the mask of the whole process: a file another thread creates meanwhile would get the
    temporary mask. A new file's mode is worked out from /proc/self/status instead (Linux 4.7+)."""
    old = os.umask(0o027)
    try:
        def no_umask(mask: int) -> int:
            raise AssertionError("os.umask was called")

        monkeypatch.setattr(os, "umask", no_umask)
        with files.atomic_path(tmp_path / "plain") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)


@pytest.mark.parametrize("code, hint", [(errno.EISDIR, "/d/f is a directory: remove it, or write elsewhere"),
                                        (errno.EACCES, "make /d writable by this user (id -un), or write elsewhere"),
                                        (errno.ENOSPC, "free space on the filesystem of /d (df -h)")])
def test_a_refused_write_says_how_to_fix_it(code: int, hint: str) -> None:
    assert files.write_hint(OSError(code, os.strerror(code)), Path("/d/f")) == hint


def test_read_regular_refuses_a_link_only_when_asked(tmp_path: Path) -> None:
    """A config or a trace may be a link to the real file; a trusted key or a cached kernel may not (O_NOFOLLOW),
    whatever the link points to: a file, a FIFO (not waited on), or nothing."""
    (tmp_path / "real").write_bytes(b"data")
    os.mkfifo(tmp_path / "fifo")
    for target in ("real", "fifo", "missing"):
        (tmp_path / f"to-{target}").symlink_to(tmp_path / target)
        with pytest.raises(files.NotRegularFile, match="^is not a regular file but a symbolic link$"):
            files.read_regular(tmp_path / f"to-{target}", 100, follow_symlinks=False)
    assert files.read_regular(tmp_path / "to-real", 100) == b"data"
    assert files.read_regular(tmp_path / "real", 100, follow_symlinks=False) == b"data"
    with pytest.raises(files.NotRegularFile, match="a FIFO$"):
        files.read_regular(tmp_path / "to-fifo", 100)
    with pytest.raises(FileNotFoundError):
        files.read_regular(tmp_path / "missing", 100, follow_symlinks=False)
