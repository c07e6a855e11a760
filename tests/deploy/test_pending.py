"""Pending installs, Mender's two-phase install (edge/deploy/install.py: install(commit=False), commit_pending,
rollback_pending): real bundles in a temp root, a stand-in daemon behind a real control socket, and processes
killed (SIGKILL) mid-install; after each step the whole root (slots, `current`, committed.json, pending.json)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.deploy import install, keys, marks
from edge.deploy.common import BundleError
from edge.deploy.slots import Store
from tests.conftest import wait_for
from tests.deploy.test_bundles import checked, daemon  # noqa: F401 (a fixture)
from tests.support.bundles import NO_HEALTH, Env, StandIn, damage
from tests.support.daemon import ROOT, edge_cmd, env

FAILED = "failed: rolled back (not committed)"


@pytest.fixture
def pending(tmp_path: Path) -> Env:
    """Bundle 1.0 committed in slot a, bundle 2.0 installed with commit=False in slot b (current, pending)."""
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    e.install(e.bundle("2.0"), commit=False)
    return e


def read(e: Env, name: str) -> Any:
    path = e.root / name
    return json.loads(path.read_text()) if path.exists() else None


def rollback_pending(e: Env, activation: install.Activation = NO_HEALTH) -> str:
    return install.rollback_pending(root=e.root, trusted_dir=e.trusted, activation=activation)


def test_a_pending_install_waits_for_its_commit(pending: Env) -> None:
    e = pending
    state = e.state()
    assert state["current"] == "b" and read(e, "committed.json")["version"] == "1.0"
    assert {k: v for k, v in read(e, "pending.json").items() if k != "at"} == {"slot": "b", "previous": "a",
                                                                              "version": "2.0"}
    listing = install.list_slots(e.root)
    assert listing["pending"]["version"] == "2.0" and listing["committed"]["version"] == "1.0"
    text = install.describe(listing)
    assert "highest committed version: 1.0 (slot a, " in text
    assert "pending: bundle 2.0 in slot b (previous a), since " in text
    assert "is pending since" in text and "mender commit or mender rollback" in text
    assert install.commit_pending(root=e.root, version="2.0") == (
        "committed bundle 2.0 in slot b; the highest committed version is 2.0")
    assert read(e, "pending.json") is None and read(e, "committed.json")["slot"] == "b"
    record = Store(e.root).record("b")
    assert record.health == "not checked" and record.committed == read(e, "committed.json")["at"]
    committed = e.state()
    assert install.commit_pending(root=e.root, version="2.0.0") == (
        "bundle 2.0 in slot b is committed already: nothing to do")
    assert rollback_pending(e) == f"no install is pending in {e.root}: nothing to roll back (current -> b)"
    assert e.state() == committed


def test_a_pending_install_with_a_healthy_daemon(tmp_path: Path, daemon: tuple[StandIn, str]) -> None:  # noqa: F811
    e = Env(tmp_path)
    outcome = e.install(e.bundle("1.0"), checked(daemon[1]), commit=False)
    assert "healthy after" in outcome.health
    assert any(n.startswith("bundle 1.0 in slot a is pending") for n in outcome.notes)
    assert Store(e.root).record("a").health == "ok" and read(e, "committed.json") is None
    install.commit_pending(root=e.root)
    assert read(e, "committed.json")["version"] == "1.0"


@pytest.mark.parametrize("commit", [True, False])
def test_no_install_while_one_is_pending(pending: Env, commit: bool) -> None:
    e = pending
    bundle, before = e.bundle(f"3.{int(commit)}"), e.state()
    with pytest.raises(BundleError) as caught:
        e.install(bundle, commit=commit)
    assert caught.value.render().startswith(
        "a deployment of bundle 2.0 is pending in slot b; mender commit or mender rollback first\nNote: pending since")
    assert "Hint: or `edge bundle rollback` ends it" in caught.value.render() and e.state() == before


@pytest.mark.parametrize("version, match", [
    ("3.0", "cannot commit bundle 3.0: the pending install is bundle 2.0 in slot b\nHint: commit the deployment"
            " that installed it, or roll it back"),
    ("three", "bundle version 'three' is not a PEP 440 version"),
])
def test_commit_refuses_another_version(pending: Env, version: str, match: str) -> None:
    before = pending.state()
    with pytest.raises(BundleError) as caught:
        install.commit_pending(root=pending.root, version=version)
    assert caught.value.render().startswith(match)
    assert pending.state() == before


@pytest.mark.parametrize("current, health, shown", [("a", "pending", "current -> a, its health: pending"),
                                                  ("b", "pending", "current -> b, its health: pending"),
                                                  ("b", "failed: x", "current -> b, its health: failed: x")])
def test_commit_refuses_a_pending_slot_that_is_not_current_and_healthy(pending: Env, current: str, health: str,
                                                                      shown: str) -> None:
    e = pending
    Store(e.root).switch(current)
    Store(e.root).set_health("b", health)
    before = e.state()
    with pytest.raises(BundleError) as caught:
        install.commit_pending(root=e.root, version="2.0")
    assert caught.value.render() == (
        f"cannot commit bundle 2.0: slot b is not current and healthy ({shown})\nNote: it failed its health check, or"
        " its install was interrupted; nothing committed\nHint: roll it back (mender rollback, or edge bundle"
        " rollback), then install it again")
    assert e.state() == before


def test_commit_without_a_pending_install(tmp_path: Path) -> None:
    e = Env(tmp_path)
    with pytest.raises(BundleError, match="no bundle root .*: nothing installed"):
        install.commit_pending(root=e.root)
    e.install(e.bundle("1.0"))
    before = e.state()
    with pytest.raises(BundleError, match="no install is pending in .*: nothing to commit\n"):
        install.commit_pending(root=e.root)
    with pytest.raises(BundleError, match=r"nothing to commit \(bundle 2.0 asked; current -> a holds 1.0\)\n") \
            as caught:
        install.commit_pending(root=e.root, version="2.0")
    assert "Hint: edge bundle list shows the slots" in caught.value.render() and e.state() == before


def test_a_pending_install_that_fails_its_health_check_goes_back_by_itself(
        tmp_path: Path, daemon: tuple[StandIn, str]) -> None:  # noqa: F811
    (stand_in, endpoint), e = daemon, Env(tmp_path)
    e.install(e.bundle("1.0"))
    before = e.state()
    stand_in.mode = "stopped"
    with pytest.raises(BundleError, match="bundle 2.0 in slot b failed: the daemon's lane"):
        e.install(e.bundle("2.0"), checked(endpoint), commit=False)
    after = e.state()
    assert (after["current"], after["committed"], after["pending"]) == ("a", before["committed"], None)
    assert after["slots"]["a"] == before["slots"]["a"] and Store(e.root).record("b").health.startswith("failed: ")
    with pytest.raises(BundleError, match="no install is pending"):
        install.commit_pending(root=e.root, version="2.0")
    assert rollback_pending(e).startswith("no install is pending") and e.state() == after


def test_rollback_pending_switches_back_restarts_and_checks(pending: Env, daemon: tuple[StandIn, str]) -> None:  # noqa: F811,E501
    e, log = pending, pending.tmp / "restarts.log"
    mark = read(e, "committed.json")
    restart = ["sh", "-c", f"readlink {e.root}/current >> {log}"]
    said = rollback_pending(e, checked(daemon[1], restart=restart))
    assert said.startswith("rolled back the pending install of bundle 2.0 in slot b: rolled back: current -> a again;"
                           " restarted on it: healthy after")
    assert log.read_text().split() == ["a"] and os.readlink(e.root / "current") == "a"
    assert Store(e.root).record("b").health == FAILED and read(e, "committed.json") == mark
    after = e.state()
    assert after["pending"] is None and after["leftovers"] == []
    assert rollback_pending(e).startswith("no install is pending") and e.state() == after      # idempotent
    with pytest.raises(BundleError, match="slot b \\(bundle 2.0\\) failed its last health check"):
        install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)


def test_rollback_pending_of_a_first_install_removes_current(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("1.0"), commit=False)
    assert rollback_pending(e).endswith("rolled back: `current` removed again (no bundle was active before)")
    assert e.state()["current"] is None and e.state()["committed"] is None and e.state()["pending"] is None


def test_rollback_pending_when_the_install_never_switched(pending: Env) -> None:
    """Died between pending.json and the switch (or switched back without removing it): only mark and remove."""
    e = pending
    Store(e.root).switch("a")
    Store(e.root).set_health("b", "pending")
    before = e.state()
    assert rollback_pending(e) == ("rolled back the pending install of bundle 2.0 in slot b: current -> a already")
    after = e.state()
    assert after["pending"] is None and after["current"] == "a" and after["slots"]["a"] == before["slots"]["a"]
    assert Store(e.root).record("b").health == FAILED


def test_rollback_pending_keeps_the_reason_a_health_check_recorded(pending: Env) -> None:
    e = pending
    Store(e.root).switch("a")
    Store(e.root).set_health("b", "failed: the daemon's lane(s) stopped")
    rollback_pending(e)
    assert Store(e.root).record("b").health == "failed: the daemon's lane(s) stopped"


@pytest.mark.parametrize("step", ["committed.json", "install.json"])
def test_a_commit_cut_short_counts_as_committed(pending: Env, step: str) -> None:
    """A crash inside commit_pending, after its first or second step: rollback_pending leaves the install as it is
    (only pending.json goes), and commit_pending finishes it."""
    e = pending
    store = Store(e.root)
    at = read(e, "pending.json")["at"]                       # the same second: it counts
    if step == "committed.json":
        marks.raise_to(store, "2.0", "b", at)
    else:
        store.write_record(store.slot("b"), dataclasses.replace(store.record("b"), committed=at))
    before = e.state()
    assert rollback_pending(e) == "bundle 2.0 in slot b is committed already: nothing rolled back"
    after = e.state()
    assert after == {**before, "pending": None} and after["current"] == "b"


def test_commit_finishes_a_commit_cut_short(pending: Env) -> None:
    e = pending
    marks.raise_to(Store(e.root), "2.0", "b")
    assert install.commit_pending(root=e.root, version="2.0").startswith("committed bundle 2.0 in slot b")
    assert read(e, "pending.json") is None and Store(e.root).record("b").committed


def test_rollback_pending_refuses_to_go_back_to_a_damaged_slot(pending: Env) -> None:
    e = pending
    (e.root / "a/det/det.onnx").chmod(0o644)
    (e.root / "a/det/det.onnx").write_bytes(b"fp32 1.X")
    before = e.state()
    with pytest.raises(BundleError, match="slot a is not intact: det/det.onnx has sha256"):
        rollback_pending(e)
    assert e.state() == before


@pytest.mark.parametrize("content, match", [
    ("{", "cannot read .*pending.json \\(the pending install\\): JSONDecodeError"),
    ('{"slot": "c", "previous": "a", "version": "2.0", "at": "x"}', "pending.json: slot 'c', previous 'a'"),
    ('{"slot": "b", "version": "2.0", "at": "x"}', "pending.json: KeyError\\('previous'\\)"),
    ('{"slot": "b", "previous": "a", "version": "zz top", "at": "x"}', "pending.json: bundle version 'zz top' is"
                                                                       " not a PEP 440 version"),
    (Path("/dev/zero"), "pending.json \\(the pending install\\): it is not a regular file but a symbolic link"),
    ("x" * 70_000, "pending.json \\(the pending install\\): it holds 70000 bytes, more than 65536"),
], ids=["json", "slot", "field", "version", "symlink", "huge"])
def test_a_damaged_pending_json_is_named(pending: Env, content: str | Path, match: str) -> None:
    e = pending
    damage(e.root / "pending.json", content)
    bundle, before = e.bundle("3.0"), e.state()
    for call in (lambda: e.install(bundle), lambda: install.commit_pending(root=e.root), lambda: rollback_pending(e)):
        with pytest.raises(BundleError, match=match):
            call()
    assert e.state() == before


# ------------------------------------------------------------------------------------------------ the operator

def test_the_operator_rollback_ends_a_pending_install(pending: Env) -> None:
    e = pending
    result = subprocess.run(edge_cmd("bundle", "rollback", "--root", str(e.root), "--keys", str(e.trusted),
                                     "--no-health"), capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rolled back to bundle 1.0" in result.stdout
    assert "note: the pending install of bundle 2.0 in slot b ended: failed: rolled back by the operator" in \
        result.stdout
    after = e.state()
    assert (after["current"], after["pending"], read(e, "committed.json")["version"]) == ("a", None, "1.0")
    assert Store(e.root).record("b").health == install.OPERATOR
    assert e.install(e.bundle("3.0")).slot == "b"


def test_the_operator_rollback_of_an_install_that_never_switched_only_ends_it(pending: Env) -> None:
    e = pending
    Store(e.root).switch("a")
    outcome = install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert (outcome.slot, outcome.previous, outcome.version, outcome.health) == ("a", "a", "1.0",
                                                                                "not checked: no switch")
    assert outcome.notes == ("the pending install of bundle 2.0 in slot b ended: failed: rolled back by the operator",)
    assert e.state()["pending"] is None and e.state()["current"] == "a"


def test_the_operator_activating_the_pending_slot_ends_it(pending: Env) -> None:
    e = pending
    Store(e.root).switch("a")
    outcome = install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert outcome.slot == "b"
    assert "the pending install of bundle 2.0 in slot b ended: activated by the operator" in outcome.notes
    assert e.state()["pending"] is None and read(e, "committed.json")["version"] == "2.0"


# ------------------------------------------------------------------------------------------------ killed

PENDING_CHILD = """
import sys
from pathlib import Path
from edge.deploy import install
bundle, root, trusted, marker = map(Path, sys.argv[1:])
restart = ["sh", "-c", f"touch {marker}; exec sleep 600"]
install.install(bundle, root=root, trusted_dir=trusted, activation=install.Activation(restart=restart),
                commit=False)
"""


def test_a_pending_install_killed_in_its_restart_is_rolled_back(pending: Env) -> None:
    """The install (commit=False, as Mender's ArtifactInstall runs it) is killed with its restart command (a power
    cut): `current` is the new, complete slot, pending.json names it; rollback_pending goes back to slot a and the
    next install works."""
    e = pending
    install.commit_pending(root=e.root)
    before = e.state()
    marker = e.tmp / "restarting"
    proc = subprocess.Popen([sys.executable, "-c", PENDING_CHILD, str(e.bundle("3.0")), str(e.root), str(e.trusted),
                             str(marker)], cwd=ROOT, env=env(), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(marker.exists, timeout=30, what="the install to switch and restart")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    killed = e.state()
    assert killed["current"] == "a" and killed["committed"] == before["committed"] and killed["leftovers"] == []
    assert read(e, "pending.json")["slot"] == "a" and read(e, "pending.json")["previous"] == "b"
    assert install.verify_slot(Store(e.root), "a", keys.load_trusted(e.trusted), e.trusted).manifest.version == "3.0"
    assert killed["slots"]["b"] == before["slots"]["b"]
    fourth = e.bundle("4.0")
    with pytest.raises(BundleError, match="a deployment of bundle 3.0 is pending in slot a"):
        e.install(fourth)
    assert rollback_pending(e).endswith("rolled back: current -> b again")
    assert e.state()["current"] == "b" and e.state()["pending"] is None
    assert e.state()["slots"]["b"] == before["slots"]["b"] and Store(e.root).record("a").health == FAILED
    assert e.install(fourth).slot == "a"


def test_a_command_line_install_killed_in_its_health_check_raises_no_mark(tmp_path: Path,
                                                                         daemon: tuple[StandIn, str]) -> None:  # noqa: F811,E501
    """`edge bundle install` (commit=True) killed while the daemon never answers: `current` is the new complete
    slot, its health `pending`, the mark unchanged; the next install resolves it."""
    (stand_in, endpoint), e = daemon, Env(tmp_path)
    e.install(e.bundle("1.0"))
    before = e.state()
    stand_in.mode = "hung"
    proc = subprocess.Popen(edge_cmd("bundle", "install", str(e.bundle("2.0")), "--root", str(e.root), "--keys",
                                     str(e.trusted), "--control", endpoint), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (e.root / "current").is_symlink() and os.readlink(e.root / "current") == "b"
                 and stand_in.asked, timeout=30, what="the install to switch and ask the daemon")
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    killed = e.state()
    assert (killed["current"], killed["committed"], killed["pending"]) == ("b", before["committed"], None)
    assert Store(e.root).record("b").health == "pending" and killed["slots"]["a"] == before["slots"]["a"]
    stand_in.release.set()
    assert e.install(e.bundle("3.0")).slot == "a" and read(e, "committed.json")["version"] == "3.0"
