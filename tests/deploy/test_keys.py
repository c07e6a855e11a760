"""Trusted key files (edge/deploy/keys.py load_trusted): real key files in a temp directory, each made into what an
attacker would leave there (a file others can write, one of another owner, a link, a FIFO). Each is refused with
the three-part error, and nothing waits on a FIFO."""
from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.deploy import keys
from edge.deploy.common import BundleError


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    """A trusted key directory with one good key, fleet.pub (mode 0644, this user's), that load_trusted accepts."""
    pair = keys.generate(tmp_path / "signer", "fleet")
    directory = tmp_path / "trusted"
    directory.mkdir(mode=0o755)
    shutil.copy(pair.public, directory / "fleet.pub")
    (directory / "fleet.pub").chmod(0o644)
    assert list(keys.load_trusted(directory)) == [pair.key_id]
    return directory


def refused(call: Callable[[], object], match: str, fifo: Path | None = None) -> BundleError:
    """`call` must raise a three-part BundleError matching `match`, within 10 s: where it waits on `fifo` instead
    (the old plain open() waited for a writer for good), a writer opens the FIFO to release it and the test fails."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:        # handed to the test's thread, which checks it
            outcome.append(exc)
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the key file was waited on, not refused")
    (error,) = outcome
    assert isinstance(error, BundleError), f"accepted or another error: {error!r}"
    assert re.search(match, error.what) and error.note and error.hint, error.render()
    return error


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646], ids=oct)
def test_a_trusted_key_others_can_write_is_refused(trusted: Path, mode: int) -> None:
    key = trusted / "fleet.pub"
    key.chmod(mode)
    error = refused(lambda: keys.load_trusted(trusted), f"^trusted key {key} is writable by group or others")
    assert error.note == f"mode {mode:o}, owner uid {os.geteuid()}" and error.hint == f"chmod go-w {key}"


def test_a_trusted_key_of_another_owner_is_refused(trusted: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving the key file to another uid needs root (os.chown)")
    key = trusted / "fleet.pub"
    os.chown(key, 4242, 4242)
    error = refused(lambda: keys.load_trusted(trusted), f"^trusted key {key} belongs to uid 4242, not to root:")
    assert error.note == "mode 644" and error.hint.startswith(f"chown root: {key}, or install the key file itself")


def test_a_trusted_key_that_is_a_link_is_refused(trusted: Path, tmp_path: Path) -> None:
    """A link in the trusted directory would make another user's file (their key, or one they may rewrite) a key
    this device trusts: refused whatever it points to."""
    elsewhere = keys.generate(tmp_path / "other", "x").public
    (trusted / "x.pub").symlink_to(elsewhere)
    error = refused(lambda: keys.load_trusted(trusted), f"^trusted key {trusted / 'x.pub'} is a symbolic link")
    assert error.note == f"it points to {elsewhere}" and "install -m 0644 NAME.pub" in error.hint


def test_a_trusted_key_that_is_a_fifo_is_refused_not_waited_on(trusted: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (trusted / "x.pub").symlink_to(fifo)
    refused(lambda: keys.load_trusted(trusted), "is a symbolic link", fifo)
    (trusted / "x.pub").unlink()
    os.mkfifo(trusted / "x.pub", 0o644)
    error = refused(lambda: keys.load_trusted(trusted), f"^trusted key {trusted / 'x.pub'} is not a key file$",
                    trusted / "x.pub")
    assert error.note == "is not a regular file but a FIFO"


def test_a_private_key_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fleet.key"
    os.mkfifo(fifo, 0o600)
    refused(lambda: keys.load_private(fifo), f"^private key {fifo} is not a key file$", fifo)


def test_a_trusted_key_file_too_large_is_refused_unread(trusted: Path) -> None:
    (trusted / "x.pub").write_bytes(b"-" * (keys.MAX_KEY_FILE_BYTES + 1))
    error = refused(lambda: keys.load_trusted(trusted), f"is larger than {keys.MAX_KEY_FILE_BYTES} bytes")
    assert error.note == f"{keys.MAX_KEY_FILE_BYTES + 1} bytes"
