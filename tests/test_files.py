"""edge/files.py: atomic writes (whole or not at all, the mode, durable) and the private-directory check."""
from __future__ import annotations

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
