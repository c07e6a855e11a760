"""Engine bundles through Mender: the Update Module's states (edge/deploy/mender.py, the shipped
scripts/mender/edge-bundle), `edge bundle pack --mender` with the real mender-artifact, and fleet deployments by
the real Mender client 3.4 (tests/support/mender.py) against a stand-in daemon behind a real control socket.

Each real run ends with the slot state asserted: `current`, what each slot holds and its health, pending.json and
committed.json. The protocol rules cited below are Mender's "Update modules v3 protocol"
(mendersoftware/mender, Documentation/update-modules-v3-file-api.md) and the 3.4 client's standalone states
(app/standalone.go)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.deploy import health, install, keys, mender
from edge.deploy.common import BundleError
from edge.engines import repository
from tests.conftest import wait_for
from tests.support import mender as real
from tests.support.bundles import Env, StandIn, make_repository, serving
from tests.support.daemon import ROOT, edge_cmd
from tests.support.daemon import env as edge_env

MENDER = real.missing()
needs_mender = pytest.mark.skipif(MENDER is not None, reason=f"real Mender runs: {MENDER}")
needs_tool = pytest.mark.skipif(real.shutil.which("mender-artifact") is None,
                                reason=f"mender-artifact not installed (apt-get install {real.PACKAGES})")


def edge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edge_cmd(*args), capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**edge_env(), **env})


def state(root: Path) -> dict[str, Any]:
    """The slot state: `current`, each slot's bundle version and health, pending.json, committed.json's version,
    and what an interrupted command left."""
    def load(path: Path) -> Any:
        return json.loads(path.read_text()) if path.exists() else None

    slots = {}
    for slot in ("a", "b"):
        manifest, record = load(root / slot / "bundle.json"), load(root / slot / "install.json")
        slots[slot] = (manifest["version"], record["health"]) if manifest else None
    committed = load(root / "committed.json")
    return {"current": os.readlink(root / "current") if (root / "current").is_symlink() else None, "slots": slots,
            "pending": load(root / "pending.json"), "committed": committed and committed["version"],
            "leftovers": sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name != ".lock")}


# ------------------------------------------------------------------------------------- the states, one by one

def module(state_name: str, api: Path, env: Env) -> subprocess.CompletedProcess[str]:
    return edge("bundle", "mender-module", state_name, str(api), "--root", str(env.root), "--keys", str(env.trusted),
                "--no-restart", "--control", f"ipc://{env.tmp}/none.sock", "--health-timeout", "1")


def test_query_states_answer_and_the_others_do_nothing(tmp_path: Path) -> None:
    """SupportsRollback: "Yes" (Mender then runs ArtifactRollback on a failure); NeedsArtifactReboot: "No" (no
    ArtifactReboot state); Download does nothing, so Mender stores the payload in FILES/files; ArtifactFailure and
    Cleanup have nothing to do; an unknown state: "all update modules should simply print nothing and return zero
    if it is invoked with an unknown first argument" (protocol v3, Execution)."""
    env = Env(tmp_path)
    env.install(env.bundle("1.0"))
    before = state(env.root)
    api = tmp_path / "api"
    api.mkdir()
    assert (module("SupportsRollback", api, env).stdout, module("NeedsArtifactReboot", api, env).stdout) == \
        ("Yes\n", "No\n")
    for name in ("Download", "ArtifactFailure", "Cleanup", "ArtifactVerifyReboot", "SomeStateOfProtocolV4"):
        result = module(name, api, env)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), name
    assert state(env.root) == before


def test_install_needs_exactly_one_bundle_file_in_the_payload(tmp_path: Path) -> None:
    env = Env(tmp_path)
    api = tmp_path / "api"
    (api / "files").mkdir(parents=True)
    for names, held in (((), "nothing"), (("a.bundle", "b.bundle"), "a.bundle, b.bundle")):
        for name in names:
            (api / "files" / name).write_bytes(b"x")
        result = module("ArtifactInstall", api, env)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == ("edge bundle: error: an edge-bundle artifact carries exactly one bundle file; this"
                                 f" one holds {held}\nHint: make artifacts with: edge bundle pack --mender"
                                 " --device-type TYPE ...\n")
    assert not env.root.exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_install_takes_only_a_regular_file_as_the_payload(tmp_path: Path, kind: str) -> None:
    """Mender's client writes the payload as a file into FILES/files (protocol v3, File tree); anything else there is
    refused by name, before the bundle root is touched, and a link is not followed to a bundle elsewhere."""
    env = Env(tmp_path)
    api = tmp_path / "api"
    (api / "files").mkdir(parents=True)
    entry = api / "files" / "2.0.bundle"
    {"symlink": lambda: entry.symlink_to(env.bundle("2.0")), "fifo": lambda: os.mkfifo(entry),
     "directory": entry.mkdir}[kind]()
    shown = {"symlink": "a symbolic link", "fifo": "a FIFO", "directory": "a directory"}[kind]
    result = module("ArtifactInstall", api, env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"edge bundle: error: an edge-bundle artifact carries exactly one bundle file; this one"
                             f" holds 2.0.bundle, {shown}\nHint: make artifacts with: edge bundle pack --mender"
                             " --device-type TYPE ...\n")
    assert not env.root.exists()


@pytest.mark.parametrize("damage", ["missing", "dev-zero", "huge", "bytes"])
def test_commit_reads_the_artifact_name_bounded(tmp_path: Path, damage: str) -> None:
    """header/artifact_name is a short line Mender writes (protocol v3, File API); a link to /dev/zero, a huge or
    undecodable file is refused with the reason, never read without bound."""
    env = Env(tmp_path)
    path = tmp_path / "api" / "header" / "artifact_name"
    path.parent.mkdir(parents=True)
    if damage == "dev-zero":
        path.symlink_to("/dev/zero")
    elif damage != "missing":
        path.write_bytes(b"edge-bundle-" + b"9" * 70_000 if damage == "huge" else b"\xff\xfe")
    result = module("ArtifactCommit", path.parent.parent, env)
    why = {"missing": "No such file or directory", "dev-zero": "it is not a regular file but a character device",
           "huge": "it holds 70012 bytes, more than 4096", "bytes": "it is not UTF-8 text"}[damage]
    assert result.returncode == 1
    assert result.stderr == (f"edge bundle: error: cannot read the artifact's name from {path}: {why}\nHint: the"
                             " module runs under Mender's client, which writes it\n")


@pytest.mark.parametrize("name", ["my-app-2.0", "edge-bundle-", ""])
def test_commit_needs_the_artifact_name_pack_gives(tmp_path: Path, name: str) -> None:
    env = Env(tmp_path)
    api = tmp_path / "api"
    (api / "header").mkdir(parents=True)
    (api / "header" / "artifact_name").write_text(name + "\n")
    result = module("ArtifactCommit", api, env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"edge bundle: error: artifact name {name!r} is not edge-bundle-<version>: the"
                                    " commit cannot say which bundle it makes permanent\nHint: make artifacts with")


def test_the_states_run_install_commit_and_rollback_of_a_pending_bundle(tmp_path: Path) -> None:
    """Each state as the CLI runs it (`run_state`, FILES as Mender fills it), against a stand-in daemon:
    ArtifactInstall leaves 2.0 pending, ArtifactRollback goes back to 1.0, a second install is committed by
    ArtifactCommit (again: already committed), and ArtifactRollback with nothing pending does nothing. A pending
    install left by a deployment Mender gave up on is rolled back by the next ArtifactInstall."""
    env = Env(tmp_path)
    env.install(env.bundle("1.0"))
    with serving(tmp_path) as (_, endpoint):
        activation = install.Activation(health=health.HealthCheck(endpoint, timeout_s=10))

        def run(name: str, version: str) -> str:
            api = tmp_path / f"api-{version}"
            if not api.exists():
                (api / "files").mkdir(parents=True)
                (api / "header").mkdir()
                env.bundle(version).rename(api / "files" / f"{version}.bundle")
                (api / "header" / "artifact_name").write_text(f"edge-bundle-{version}\n")
            return mender.run_state(name, api, root=env.root, trusted_dir=env.trusted, activation=activation)

        first = run("ArtifactInstall", "2.0")             # one report line, then the install's notes
        assert first.startswith(f"installed bundle 2.0 (key {env.keys.key_id}) in slot b, pending until"
                                " ArtifactCommit; current -> b (was a); health: healthy after ")
        assert all(line.startswith("note: ") for line in first.splitlines()[1:])
        pending = state(env.root)
        assert (pending["current"], pending["pending"]["slot"], pending["pending"]["version"],
                pending["committed"]) == ("b", "b", "2.0", "1.0")
        run("ArtifactRollback", "2.0")
        back = state(env.root)
        assert (back["current"], back["pending"], back["committed"]) == ("a", None, "1.0")
        assert back["slots"]["b"][1].startswith("failed: rolled back")
        assert run("ArtifactRollback", "2.0") == f"no install is pending in {env.root}: nothing to roll back"
        assert state(env.root) == back
        run("ArtifactInstall", "2.0")
        run("ArtifactCommit", "2.0")
        done = state(env.root)
        assert (done["current"], done["pending"], done["committed"], done["slots"]["b"]) == ("b", None, "2.0",
                                                                                            ("2.0", "ok"))
        assert run("ArtifactCommit", "2.0") == "bundle 2.0 in slot b is committed already: nothing to do"
        for name in ("Download", "ArtifactFailure", "Cleanup", "SupportsRollback", "SomeStateOfProtocolV4"):
            assert run(name, "2.0") == "" and state(env.root) == done
        run("ArtifactInstall", "3.0")                  # left pending: a deployment Mender gave up on
        said = run("ArtifactInstall", "3.1").splitlines()
        assert said[0].startswith("rolled back") and said[1].startswith("installed bundle 3.1 ")
        last = state(env.root)
        assert (last["current"], last["pending"]["version"], last["committed"]) == ("a", "3.1", "2.0")
        assert last["leftovers"] == []


def test_the_payload_and_the_artifact_name_are_checked_before_any_slot_changes(tmp_path: Path) -> None:
    """In-process twins of the CLI tests above: what ArtifactInstall and ArtifactCommit refuse, and that they
    refuse it before the bundle root is touched."""
    env = Env(tmp_path)
    api = tmp_path / "api"
    (api / "files").mkdir(parents=True)
    with pytest.raises(BundleError, match="carries exactly one bundle file; this one holds nothing"):
        mender.run_state("ArtifactInstall", api, root=env.root, trusted_dir=env.trusted,
                         activation=install.Activation())
    name = api / "header" / "artifact_name"
    for damage, why in ((None, "No such file or directory"), (b"\xff\xfe", "it is not UTF-8 text"),
                        ("/dev/zero", "it is not a regular file but a character device")):
        if isinstance(damage, bytes):
            name.parent.mkdir()
            name.write_bytes(damage)
        elif damage:
            name.unlink()
            name.symlink_to(damage)
        with pytest.raises(BundleError) as info:
            mender.artifact_version(api)
        assert (info.value.what, info.value.hint) == (f"cannot read the artifact's name from {name}: {why}",
                                                      "the module runs under Mender's client, which writes it")
    name.unlink()
    name.write_text("edge-bundle-\n")
    with pytest.raises(BundleError, match="artifact name 'edge-bundle-' is not edge-bundle-<version>"):
        mender.run_state("ArtifactCommit", api, root=env.root, trusted_dir=env.trusted,
                         activation=install.Activation())
    name.write_text("edge-bundle-2.0\n")
    assert mender.artifact_version(api) == "2.0"
    assert not env.root.exists()
    env.bundle("1.0").rename(api / "files" / "1.0.bundle")      # the first bundle of a vehicle: no slot before
    said = mender.run_state("ArtifactInstall", api, root=env.root, trusted_dir=env.trusted,
                            activation=install.Activation())
    assert said.startswith("installed bundle 1.0 ") and "; current -> a (was none); health: not checked" in said


def test_device_types_are_checked_against_the_plans_in_process(tmp_path: Path) -> None:
    """pack's rule, in-process: every type needs a plan of each model that has plans; ONNX-only models match any
    type; a name that is not a device type is refused."""
    built = make_repository(tmp_path / "orin" / "det", device_type="jetson-agx-orin")
    mender.check_device_types([built], ["jetson-agx-orin"])
    with pytest.raises(BundleError, match="model det has no plan for device type jetson-orin-nx: its plans were"
                                          " built on device types 'jetson-agx-orin'"):
        mender.check_device_types([built], ["jetson-agx-orin", "jetson-orin-nx"])
    with pytest.raises(BundleError, match="--device-type 'two words' is not a Mender device type"):
        mender.check_device_types([built], ["two words"])
    mender.check_device_types([onnx_only(tmp_path / "any" / "det")], ["jetson-orin-nx", "x86-64-pc"])
    (tmp_path / "broken").mkdir()                       # not a repository: archive.pack says so; the rest is checked
    with pytest.raises(BundleError, match="model det has no plan for device type jetson-orin-nx"):
        mender.check_device_types([tmp_path / "broken", built], ["jetson-orin-nx"])


def test_the_payload_names_what_it_holds_in_process(tmp_path: Path) -> None:
    api = tmp_path / "api"
    (api / "files").mkdir(parents=True)
    (api / "files" / "a.bundle").write_bytes(b"x")
    os.mkfifo(api / "files" / "b.bundle")
    with pytest.raises(BundleError) as info:
        mender.payload(api)
    assert info.value.what == ("an edge-bundle artifact carries exactly one bundle file; this one holds a.bundle,"
                               " b.bundle, a FIFO")


# ------------------------------------------------------------------------------------------------- packing

def onnx_only(directory: Path) -> Path:
    """An engine repository without plans: they run on any board."""
    make_repository(directory)
    manifest = repository.Manifest.load(directory)
    repository.Manifest(directory, manifest.model, [v for v in manifest.variants if v.format == "onnx"]).save()
    (directory / "plans" / "det.int8.orin.plan").unlink()
    (directory / "plans" / "det.int8.orin.plan.json").unlink()
    return directory


def read_artifact(path: Path) -> str:
    return subprocess.run(["mender-artifact", "read", str(path)], capture_output=True, text=True, timeout=60,
                          check=True).stdout


@needs_tool
def test_pack_mender_writes_the_bundle_and_its_artifact(tmp_path: Path) -> None:
    env = Env(tmp_path)
    result = real.pack(env, "2026.11.2", "jetson-agx-orin")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "2026.11.2.mender"
    assert result.stdout.splitlines()[-1] == (f"wrote {out}: Mender artifact edge-bundle-2026.11.2, payload type"
                                              " edge-bundle, device types jetson-agx-orin")
    shown = read_artifact(out)
    assert "Name: edge-bundle-2026.11.2" in shown and "Compatible devices: '[jetson-agx-orin]'" in shown
    assert "Type:   edge-bundle" in shown and "name:     2026.11.2.bundle" in shown
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []        # no temp file left


@needs_tool
def test_pack_refuses_a_device_type_without_plans_for_it_and_writes_nothing(tmp_path: Path) -> None:
    """Refused at pack time, not on the vehicle: the model's plan was built on a jetson-agx-orin board."""
    env = Env(tmp_path)
    result = real.pack(env, "2.0", "jetson-agx-orin", "jetson-orin-nano")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(
        "edge bundle: error: model det has no plan for device type jetson-orin-nano: its plans were built on device"
        " types 'jetson-agx-orin'\nNote: ")
    assert result.stderr.endswith("device types asked for: jetson-agx-orin, jetson-orin-nano\nHint: build the plans"
                                  " on a board of type jetson-orin-nano (edge build there records its type), or leave"
                                  " jetson-orin-nano out\n")
    assert not (tmp_path / "2.0.bundle").exists() and not (tmp_path / "2.0.mender").exists()
    without = real.pack(env, "2.1", "jetson-agx-orin", device_type="")      # plans built where Mender was not
    assert without.returncode == 1 and "its plans were built on device types '' (a board without Mender)" \
        in without.stderr


@needs_tool
def test_models_without_plans_match_every_device_type(tmp_path: Path) -> None:
    env = Env(tmp_path)
    source = onnx_only(tmp_path / "det")
    out = tmp_path / "fleet.bundle"
    result = edge("bundle", "pack", str(source), "--key", str(env.keys.private), "--version", "3.0", "--out",
                  str(out), "--mender", "--device-type", "jetson-orin-nano", "--device-type", "raspberrypi4")
    assert result.returncode == 0, result.stderr
    assert "Compatible devices: '[jetson-orin-nano raspberrypi4]'" in read_artifact(tmp_path / "fleet.mender")


@pytest.mark.parametrize(("extra", "message"), [
    (("--mender",), "--mender needs the device types the artifact is for\nHint: --device-type TYPE"),
    (("--device-type", "x"), "--device-type names the device types of a Mender artifact\nHint: add --mender"),
    (("--mender", "--device-type", "a b"), "--device-type 'a b' is not a Mender device type (1 to 128 letters,"),
    (("--mender", "--device-type", ""), "--device-type '' is not a Mender device type"),
])
def test_pack_mender_usage_errors(tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    env = Env(tmp_path)
    source = make_repository(tmp_path / "det")
    result = edge("bundle", "pack", str(source), "--key", str(env.keys.private), "--version", "2.0", "--out",
                  str(tmp_path / "2.0.bundle"), *extra)
    assert result.returncode == 1 and result.stderr.startswith(f"edge bundle: error: {message}"), result.stderr
    assert not (tmp_path / "2.0.bundle").exists()


def test_pack_mender_without_the_tool_says_how_to_get_it(tmp_path: Path) -> None:
    env = Env(tmp_path)
    source = make_repository(tmp_path / "det", device_type="t")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = edge("bundle", "pack", str(source), "--key", str(env.keys.private), "--version", "2.0", "--out",
                  str(tmp_path / "2.0.bundle"), "--mender", "--device-type", "t", PATH=str(empty))
    assert result.returncode == 1
    assert result.stderr == ("edge bundle: error: --mender needs mender-artifact, which is not installed\nHint:"
                             " install it: sudo apt-get install mender-artifact (Debian/Ubuntu), or put it on PATH\n")
    assert not (tmp_path / "2.0.bundle").exists()


# ---------------------------------------------------------------------------------- fleet deployments, for real

@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Env, StandIn, str]]:
    """Bundle 1.0 installed and committed in slot a; the stand-in daemon answers on a real control socket."""
    env = Env(tmp_path)
    env.install(env.bundle("1.0"))
    with serving(tmp_path) as (stand_in, endpoint):
        yield env, stand_in, endpoint


def artifact(env: Env, version: str, *, key: Path | None = None) -> Path:
    result = real.pack(env, version, key=key)
    assert result.returncode == 0, result.stderr
    return env.tmp / f"{version}.mender"


BEFORE = {"current": "a", "slots": {"a": ("1.0", "not checked"), "b": None}, "pending": None, "committed": "1.0",
          "leftovers": []}
ON_2 = {**BEFORE, "current": "b", "slots": {"a": ("1.0", "not checked"), "b": ("2.0", "ok")}}   # switched to 2.0


@needs_mender
def test_install_then_commit(fleet: tuple[Env, StandIn, str]) -> None:
    """`mender install` runs Download, SupportsRollback, ArtifactInstall, NeedsArtifactReboot; `mender commit` runs
    ArtifactCommit and Cleanup ("-commit ... will only invoke the two last states", protocol v3, Command line
    invocation). Between them the install is pending: switched and healthy, not yet the high-water mark."""
    env, _, endpoint = fleet
    vehicle = real.Vehicle(env, endpoint)
    assert state(env.root) == BEFORE
    installed = vehicle.mender("install", str(artifact(env, "2.0")))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Use 'commit' to update, or 'rollback' to roll back the update." in installed.stdout
    pending = state(env.root)
    assert pending["pending"]["slot"] == "b" and pending["pending"]["version"] == "2.0"
    assert {**pending, "pending": None} == ON_2
    assert vehicle.artifact() == "factory"                       # Mender too: nothing committed yet
    committed = vehicle.mender("commit")
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert state(env.root) == {**ON_2, "committed": "2.0"}
    assert vehicle.artifact() == "edge-bundle-2.0"


@needs_mender
def test_a_failed_health_check_rolls_back_and_the_active_slot_is_unchanged(fleet: tuple[Env, StandIn, str]) -> None:
    """ArtifactInstall fails (exit 1: "Returning any non-zero value in the update module triggers a failure"), so
    the client runs ArtifactRollback, ArtifactFailure and Cleanup (standalone.go, doStandaloneFailureStates); the
    install has switched back already. The module's three-part error is in Mender's log."""
    env, stand_in, endpoint = fleet
    stand_in.mode = "stuck"
    before = env.snapshot()
    vehicle = real.Vehicle(env, endpoint, health_timeout=1)
    result = vehicle.mender("install", str(artifact(env, "2.0")))
    assert result.returncode == 1
    assert "bundle 2.0 in slot b failed: the daemon was not healthy within 1 s" in result.stderr
    after = state(env.root)
    assert after["slots"]["b"][1].startswith("failed: ")
    assert {**after, "slots": {**after["slots"], "b": None}} == BEFORE and env.snapshot() == before
    assert vehicle.artifact() == "factory" and vehicle.mender("commit").returncode == 2    # nothing to commit


@needs_mender
def test_an_untrusted_signature_is_refused_before_any_slot_changes(fleet: tuple[Env, StandIn, str]) -> None:
    env, _, endpoint = fleet
    stranger = keys.generate(env.tmp / "stranger")
    vehicle = real.Vehicle(env, endpoint)
    result = vehicle.mender("install", str(artifact(env, "2.0", key=stranger.private)))
    assert result.returncode == 1 and "which this device does not trust" in result.stderr
    assert state(env.root) == BEFORE and vehicle.artifact() == "factory"


@needs_mender
def test_a_wrong_device_type_is_refused_by_mender_before_the_module_runs(fleet: tuple[Env, StandIn, str]) -> None:
    env, _, endpoint = fleet
    vehicle = real.Vehicle(env, endpoint, device_type="jetson-orin-nano")
    result = vehicle.mender("install", str(artifact(env, "2.0")))
    assert result.returncode == 1
    assert "image (device types [jetson-agx-orin]) not compatible with device jetson-orin-nano" in result.stderr
    assert state(env.root) == BEFORE and vehicle.artifact() == "factory"


@needs_mender
def test_a_replayed_older_bundle_is_refused(fleet: tuple[Env, StandIn, str]) -> None:
    """A stolen or old artifact, validly signed: after 2.0 is committed, 1.5 is refused before extraction, the
    error naming both versions; the vehicle stays on 2.0."""
    env, _, endpoint = fleet
    vehicle = real.Vehicle(env, endpoint)
    assert vehicle.mender("install", str(artifact(env, "2.0"))).returncode == 0
    assert vehicle.mender("commit").returncode == 0
    committed = state(env.root)
    result = vehicle.mender("install", str(artifact(env, "1.5")))
    assert result.returncode == 1 and "1.5" in result.stderr and "2.0" in result.stderr
    assert state(env.root) == committed == {**ON_2, "committed": "2.0"}
    assert vehicle.artifact() == "edge-bundle-2.0"


@needs_mender
def test_the_module_killed_during_install_then_mender_rollback(fleet: tuple[Env, StandIn, str]) -> None:
    """A power cut while the health check waits: SIGKILL to the whole mender process group. Mender stores its
    standalone state only after ArtifactInstall returns (standalone.go, storeStandaloneData), so `mender rollback`
    finds nothing to roll back (exit 2) and does not run the module; the root holds one complete slot in
    `current` and the pending install. The next deployment's ArtifactInstall rolls that back first, then installs."""
    env, stand_in, endpoint = fleet
    stand_in.mode = "stuck"
    vehicle = real.Vehicle(env, endpoint, health_timeout=600)
    running = vehicle.start("install", str(artifact(env, "2.0")))
    try:
        wait_for(lambda: (env.root / "pending.json").exists() and stand_in.asked > 1, timeout=60,
                 what="the module's health check")
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.communicate(timeout=30)
    killed = state(env.root)
    assert killed["pending"]["slot"] == "b" and killed["pending"]["previous"] == "a"
    assert {**killed, "pending": None, "slots": {**killed["slots"], "b": None}} == {**BEFORE, "current": "b"}
    rollback = vehicle.mender("rollback")
    assert rollback.returncode == 2 and state(env.root) == killed
    stand_in.mode = "healthy"
    again = vehicle.mender("install", str(env.tmp / "2.0.mender"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert vehicle.mender("commit").returncode == 0
    assert state(env.root) == {**ON_2, "committed": "2.0"}


@needs_mender
@pytest.mark.parametrize("full", ["bytes", "inodes"])
def test_disk_full_leaves_the_active_slot(fleet: tuple[Env, StandIn, str], full: str) -> None:
    """The bundle root on a small tmpfs inside the namespace (a copy of the real one). `bytes`: 1 MiB for a 2 MiB
    bundle, refused before extraction; `inodes`: room for 3 more files, so extraction itself hits ENOSPC. The
    root's state after the run is copied out of the namespace before it ends."""
    env, _, endpoint = fleet
    vehicle = real.Vehicle(env, endpoint)
    source = make_repository(env.tmp / "src-2.0" / "det", big=2 << 20 if full == "bytes" else 0,
                             device_type="jetson-agx-orin")
    packed = edge("bundle", "pack", str(source), "--key", str(env.keys.private), "--version", "2.0", "--out",
                  str(env.tmp / "2.0.bundle"), "--mender", "--device-type", "jetson-agx-orin")
    assert packed.returncode == 0, packed.stderr
    saved, after = env.tmp / "saved", env.tmp / "after"
    subprocess.run(["cp", "-a", str(env.root), str(saved)], check=True, timeout=60)
    after.mkdir()
    inodes = 1 + sum(1 for _ in saved.rglob("*")) + 3
    size = "size=1m" if full == "bytes" else f"size=64m,nr_inodes={inodes}"
    tmpfs = f"mount -t tmpfs -o {size},mode=0755 tmpfs {env.root} && cp -a {saved}/. {env.root}"
    result = vehicle.mender("install", str(env.tmp / "2.0.mender"), inside=tmpfs, after=f"cp -a {env.root}/. {after}")
    said = "not enough space to install bundle 2.0" if full == "bytes" else "disk full while extracting"
    assert result.returncode == 1 and f"edge bundle: error: {said}" in result.stderr, result.stderr[-3000:]
    assert state(after) == BEFORE


@needs_mender
def test_a_commit_under_another_artifact_name_fails_and_mender_rolls_back(fleet: tuple[Env, StandIn, str]) -> None:
    """An artifact renamed edge-bundle-9.0 around bundle 2.0 (its name is not signed by edge): ArtifactInstall leaves
    2.0 pending, ArtifactCommit refuses to make 9.0 permanent, and Mender 3.4 then runs ArtifactRollback, which
    switches back ("Any of these states fail ...: ArtifactCommit", protocol v3, ArtifactRollback state;
    app/standalone.go doStandaloneCommitStates -> doStandaloneFailureStates)."""
    env, _, endpoint = fleet
    artifact(env, "2.0")
    renamed = env.tmp / "renamed.mender"
    mender.write_artifact(env.tmp / "2.0.bundle", "9.0", ["jetson-agx-orin"], renamed, tool=mender.find_tool())
    vehicle = real.Vehicle(env, endpoint)
    assert vehicle.mender("install", str(renamed)).returncode == 0
    assert state(env.root)["pending"]["version"] == "2.0"
    result = vehicle.mender("commit")
    assert result.returncode == 1
    assert "cannot commit bundle 9.0: the pending install is bundle 2.0 in slot b" in result.stderr
    assert "rolled back the pending install of bundle 2.0 in slot b" in result.stderr
    after = state(env.root)
    assert after["slots"]["b"] == ("2.0", "failed: rolled back (not committed)")
    assert {**after, "slots": {**after["slots"], "b": None}} == BEFORE and vehicle.artifact() == "factory"


def test_the_fleet_rollout_docs_follow_menders_own() -> None:
    """docs/operations.md, "Fleet rollout", against Mender's sources: `mender-cli artifacts --server URL upload FILE`
    (mender-docs 10.Server-integration/01.Using-the-apis/docs.md; --server is a per-call flag defaulting to
    hosted.mender.io, mender-cli cmd/root.go); phases and retries are "Professional/Enterprise only" (mender-docs
    02.Overview/05.Deployment/docs.md, 2023); the device type in /var/lib/mender/device_type (mender-docs
    03.Client-installation/07.Configuration/50.Configuration-options, DeviceTypeFile); the deployment log in the
    data directory as deployments.0001.<id>.log, five kept (mender 3.4 app/deployment_logger.go, cli/cli.go); the
    daemon rolls back a state cut short by a restart (mender 3.4 app/state.go, initState.getNextState)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    fleet = " ".join(text[text.index("## Fleet rollout"):].split())
    for said in ("mender-cli artifacts --server https://hosted.mender.io upload fleet-2026.11.2.mender",
                 "with retries, on its Professional and Enterprise plans",
                 "On the Professional and Enterprise plans (not the open-source server), one deployment can do both",
                 "/var/lib/mender/device_type", "`/var/lib/mender/deployments.0001.<deployment id>.log` (the last five",
                 "runs `ArtifactRollback`, `ArtifactFailure` and `Cleanup` by itself"):
        assert said in fleet, said
    assert "mender-cli artifacts upload" not in fleet and "On Mender Enterprise" not in fleet
