"""What the `edge` command prints, run as real subprocesses (issue 16): each section names its item."""
from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from edge.publisher import Publisher
from tests.daemon import ROOT, edge_cmd, env

SIGPIPE_STATUS = 141              # 128 + SIGPIPE: what a shell reports for `yes | head`


# ------------------------------------------------------------------------------- a reader that goes (item 14)

def test_a_closed_pipe_ends_any_command_quietly_with_the_sigpipe_status(tmp_path: Path) -> None:
    """`edge bundle list --json | head`: the reader has gone before edge writes (its end of the pipe is closed
    before edge starts), so every write fails with EPIPE. Python's docs (library/signal.rst, "Note on SIGPIPE",
    3.10-3.12) say to catch BrokenPipeError in the entry point and point stdout at /dev/null so that the flush at
    exit does not fail again; the status is a SIGPIPE death's, as the shell reports for coreutils."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(edge_cmd("bundle", "list", "--json", "--root", str(tmp_path / "none")), cwd=ROOT,
                              env=env(), stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (SIGPIPE_STATUS, "")


@pytest.fixture
def ticking(tmp_path: Path, ctx: zmq.Context) -> Iterator[str]:
    """A real publisher on an ipc endpoint sending an event every 20 ms until the test ends."""
    endpoint = f"ipc://{tmp_path}/results.sock"
    publisher = Publisher(endpoint, context=ctx)
    publisher.start()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.02):
            publisher.event("camera.lost", {"camera": "cam0", "reason": "a test tick"})
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join(10)
    publisher.stop(5)


def test_subscribe_into_head_ends_quietly(ticking: str) -> None:
    """`edge subscribe | head -2` in a real shell pipeline: head exits after two lines and edge subscribe, at its
    next line, ends with the SIGPIPE status and no traceback."""
    script = f"{' '.join(edge_cmd('subscribe', '--endpoint', ticking))} | head -2; echo \"status ${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("camera.lost" in line for line in lines[:2]), done.stdout
    assert lines[2] == f"status {SIGPIPE_STATUS}"
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
