"""Anti-rollback and target binding (edge/deploy/admission.py, marks.py): an install below the highest committed
version, or of a bundle with nothing this device can run, is refused before anything is extracted; real bundles in
a temp root, and the whole root (slots, `current`, committed.json, pending.json) checked after each refusal."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.deploy import admission, archive, install
from edge.deploy.common import BundleError
from edge.deploy.slots import Store
from edge.engines import repository
from edge.engines.repository import DeviceKey
from tests.deploy.test_bundles import checked, daemon  # noqa: F401 (a fixture)
from tests.support.bundles import NO_HEALTH, Env, StandIn, damage
from tests.support.daemon import edge_cmd, env

ORIN = DeviceKey("NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "10.3.0.30", "8.7", "int8")
THOR = DeviceKey("NVIDIA Jetson AGX Thor Developer Kit", "38.2.0", "10.13.3.9", "11.0", "fp16")


def committed(e: Env) -> dict[str, Any]:
    return json.loads((e.root / "committed.json").read_text())


def refused(e: Env, bundle: Path, match: str, **kwargs: Any) -> BundleError:
    """Install `bundle`: it must fail with `match` and leave the whole root as it was."""
    before = e.state()
    with pytest.raises(BundleError, match=match) as caught:
        e.install(bundle, **kwargs)
    assert e.state() == before
    return caught.value


def cli(e: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edge_cmd("bundle", *args, "--root", str(e.root), *(
        ["--keys", str(e.trusted), "--no-health"] if args[0] != "list" else [])), capture_output=True, text=True,
        env=env(), timeout=60)


# ------------------------------------------------------------------------------------------------ versions

def test_replaying_an_older_bundle_is_refused_naming_both_versions(tmp_path: Path) -> None:
    """The attacker's measurement: install v2, then the validly signed v1. v1 is refused before anything of it is
    extracted (slot b is not even made), through the API and the command alike."""
    e = Env(tmp_path)
    v1, v2 = e.bundle("1.0"), e.bundle("2.0")
    e.install(v2)
    mark = committed(e)
    assert (mark["version"], mark["slot"]) == ("2.0", "a") and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}Z", mark["at"])
    error = refused(e, v1, rf"bundle 1.0 is older than bundle 2.0, the highest version this device has committed"
                           rf" \(slot a, {mark['at']}\): refused as a rollback")
    text = error.render()
    assert ("\nNote: replaying an older, validly signed bundle is what a stolen or old artifact allows; nothing was"
            " extracted, the active bundle is unchanged\n") in text
    assert "Hint: install bundle 2.0 or a later one; in a workshop, --allow-downgrade installs" in text
    assert not (e.root / "b").exists()
    before = e.state()
    result = cli(e, "install", str(v1))
    assert result.returncode == 1 and result.stderr.startswith("edge bundle: error: bundle 1.0 is older than bundle"
                                                               " 2.0")
    assert "\nNote: " in result.stderr and "\nHint: " in result.stderr and e.state() == before


def test_versions_are_ordered_as_pep_440_not_as_text(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("1.9"))
    e.install(e.bundle("1.10"))                                 # 1.10 > 1.9, though "1.10" < "1.9" as text
    refused(e, e.bundle("1.9.9"), "bundle 1.9.9 is older than bundle 1.10")
    refused(e, e.bundle("1.10rc1"), "bundle 1.10rc1 is older than bundle 1.10")
    assert e.install(e.bundle("1.10.0")).slot == "a"            # equal (1.10 is 1.10.0): a reinstall, allowed
    assert committed(e)["version"] == "1.10.0" and committed(e)["slot"] == "a"


def test_allow_downgrade_installs_logs_notes_and_records_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("2.0"))
    mark = committed(e)
    with caplog.at_level(logging.WARNING, logger="edge.deploy"):
        outcome = e.install(e.bundle("1.0"), allow_downgrade=True)
    assert (outcome.slot, outcome.version, os.readlink(e.root / "current")) == ("b", "1.0", "b")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "installing bundle 1.0 below bundle 2.0, the highest version this device has committed (--allow-downgrade)"]
    assert any("bundle 1.0 is older than bundle 2.0, the highest version committed here: installed because of"
               " --allow-downgrade (recorded in slot b); the highest committed version stays 2.0" in n
               for n in outcome.notes)
    assert json.loads((e.root / "b/install.json").read_text())["downgrade_from"] == "2.0"
    assert "downgrade_from" not in json.loads((e.root / "a/install.json").read_text())
    assert committed(e) == mark                                 # the mark never lowers
    refused(e, e.bundle("1.5"), "bundle 1.5 is older than bundle 2.0")


def test_allow_downgrade_on_the_command_line(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("2.0"))
    result = cli(e, "install", str(e.bundle("1.0")), "--allow-downgrade")
    assert result.returncode == 0, result.stderr
    assert "installed bundle 1.0" in result.stdout and "installed because of --allow-downgrade" in result.stdout
    assert "installing bundle 1.0 below bundle 2.0" in result.stderr
    listed = cli(e, "list")
    assert "highest committed version: 2.0 (slot a, " in listed.stdout and "pending: none" in listed.stdout
    assert "downgrade_from" in cli(e, "list", "--json").stdout


def test_a_failed_health_check_switches_back_and_the_mark_stays(tmp_path: Path,
                                                               daemon: tuple[StandIn, str]) -> None:  # noqa: F811
    """Switching back after a failed health check is not a downgrade: it works, the mark stays where it was, and
    the bundle that was switched back to can be installed again."""
    (stand_in, endpoint), e = daemon, Env(tmp_path)
    v2 = e.bundle("2.0")
    e.install(v2)
    mark, before = committed(e), e.state()
    stand_in.mode = "stuck"
    with pytest.raises(BundleError, match="bundle 3.0 in slot b failed: the daemon was not healthy") as caught:
        e.install(e.bundle("3.0"), checked(endpoint, timeout_s=0.5))
    assert "rolled back: current -> a again" in caught.value.render()
    assert os.readlink(e.root / "current") == "a" and committed(e) == mark
    assert e.state()["slots"]["a"] == before["slots"]["a"]
    assert Store(e.root).record("b").health.startswith("failed: ")
    stand_in.mode = "healthy"
    assert e.install(v2, checked(endpoint)).slot == "b"
    assert committed(e)["version"] == "2.0" and committed(e)["slot"] == "b"


def test_an_operator_rollback_or_activate_never_lowers_the_mark(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    e.install(e.bundle("2.0"))
    mark = committed(e)
    assert install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH).version == "1.0"
    assert committed(e) == mark
    refused(e, e.bundle("1.5"), "bundle 1.5 is older than bundle 2.0")
    install.activate("b", root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)
    assert committed(e) == mark


def test_a_root_from_before_committed_json_counts_its_current_healthy_slot(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    e.install(e.bundle("2.0"))
    (e.root / "committed.json").unlink()                        # as an older edge left it
    listing = install.list_slots(e.root)
    assert listing["committed"] == {"version": "2.0", "slot": "b", "at": Store(e.root).record("b").installed,
                                    "source": "slot b's bundle (no committed.json yet)"}
    older = e.bundle("1.5")
    refused(e, older, r"bundle 1.5 is older than bundle 2.0, .* \(slot b, ")
    assert not (e.root / "committed.json").exists()
    install.rollback(root=e.root, trusted_dir=e.trusted, activation=NO_HEALTH)      # written down before the switch
    assert (committed(e)["version"], committed(e)["slot"]) == ("2.0", "b")
    refused(e, older, "bundle 1.5 is older than bundle 2.0")


def test_a_current_slot_never_found_healthy_sets_no_mark(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(e.bundle("2.0"))
    (e.root / "committed.json").unlink()
    Store(e.root).set_health("a", "pending")                    # killed during its health check, older edge
    assert install.list_slots(e.root)["committed"] is None
    assert e.install(e.bundle("1.0")).slot == "b"


@pytest.mark.parametrize("content, match", [
    ("{not json", "cannot read .*committed.json \\(the highest committed version\\): JSONDecodeError"),
    ('["2.0"]', "cannot read .*committed.json \\(the highest committed version\\): a JSON list, not an object"),
    ('{"version": "2.0"}', "cannot read .*committed.json: KeyError\\('slot'\\)"),
    ('{"version": "two", "slot": "a", "at": "x"}', "cannot read .*committed.json: bundle version 'two' is not a PEP"
                                                   " 440 version of 1 to 64"),
    ('{"version": "2.0", "slot": "../etc", "at": "x"}', "cannot read .*committed.json: slot '../etc' is not a slot"),
    (b"\xff\xfe", "cannot read .*committed.json \\(the highest committed version\\): UnicodeDecodeError"),
    ("x" * 70_000, "cannot read .*committed.json \\(the highest committed version\\): it holds 70000 bytes, more"
                   " than 65536"),
    (Path("/dev/zero"), "cannot read .*committed.json \\(the highest committed version\\): it is not a regular file"
                        " but a symbolic link"),
    ("fifo", "cannot read .*committed.json \\(the highest committed version\\): it is not a regular file but a"
             " FIFO"),
], ids=["json", "list", "field", "version", "slot", "bytes", "huge", "symlink", "fifo"])
def test_a_damaged_committed_json_refuses_the_install(tmp_path: Path, content: str | bytes | Path,
                                                      match: str) -> None:
    """A root-owned, private bundle root means only root can write committed.json; what root (or a damaged disk)
    leaves there is still read with bounds: no link followed (a link to a lower mark, or to /dev/zero), no FIFO
    waited on, no unbounded read."""
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    damage(e.root / "committed.json", content)
    error = refused(e, e.bundle("2.0"), match)
    assert "Hint: look at it; `edge bundle list` shows the slots" in error.render()
    assert not (e.root / "b").exists()
    assert "committed.json" in install.list_slots(e.root)["notes"][-1]


# ------------------------------------------------------------------------------------------------ target binding

def plans_only(e: Env, version: str, *keys: DeviceKey) -> Path:
    """A bundle whose model `det` has only TensorRT plans, one per key."""
    directory = e.tmp / f"plans-{version}" / "det"
    directory.mkdir(parents=True)
    variants = []
    for i, key in enumerate(keys):
        data = f"plan {i} {key.board}".encode()
        (directory / f"det.{i}.plan").write_bytes(data)
        variants.append(repository.Variant(key.precision, "plan", f"det.{i}.plan", hashlib.sha256(data).hexdigest(),
                                           key, source_sha256="0" * 64))
    repository.Manifest(directory, "det", variants).save()
    out = e.tmp / f"plans-{version}.bundle"
    archive.pack([directory], key=e.keys.private, version=version, out=out)
    return out


def test_a_bundle_with_only_thor_plans_is_refused_here_naming_the_keys(tmp_path: Path) -> None:
    """The issue's measurement: a bundle with only a Jetson AGX Thor plan installed on anything. Now refused, on an
    Orin and where TensorRT is absent, naming the plans' keys and this device's."""
    e = Env(tmp_path)
    e.install(e.bundle("1.0"))
    thor = plans_only(e, "2.0", THOR)
    error = refused(e, thor, "bundle 2.0 holds nothing this device can run for model det: no ONNX variant, and its"
                             " plans are for NVIDIA Jetson AGX Thor Developer Kit L4T 38.2.0 TensorRT 10.13.3.9 SM"
                             " 11.0", device_key=lambda: ORIN)
    text = error.render()
    assert ("Note: this device: NVIDIA Jetson AGX Orin Developer Kit L4T 36.4.3 TensorRT 10.3.0.30 SM 8.7; nothing"
            " was extracted, the active bundle is unchanged") in text
    assert "Hint: build the plans on a board like this one (edge build) and pack them, or pack the" in text
    error = refused(e, thor, "bundle 2.0 holds nothing this device can run", device_key=lambda: None)
    assert "this device: no TensorRT (only ONNX variants run here)" in error.render()
    assert not (e.root / "b").exists()


def test_a_plan_for_this_platform_or_an_onnx_variant_is_enough(tmp_path: Path) -> None:
    e = Env(tmp_path)
    e.install(plans_only(e, "1.0", THOR, ORIN), device_key=lambda: ORIN)
    other_precision = DeviceKey(ORIN.board, ORIN.l4t, ORIN.tensorrt, ORIN.sm, "fp16")     # platform() matches
    assert e.install(plans_only(e, "2.0", THOR), device_key=lambda: THOR).slot == "b"
    assert e.install(plans_only(e, "3.0", other_precision), device_key=lambda: ORIN).slot == "a"
    newer_l4t = DeviceKey(ORIN.board, "36.5.0", ORIN.tensorrt, ORIN.sm)
    refused(e, plans_only(e, "4.0", ORIN), "holds nothing this device can run", device_key=lambda: newer_l4t)
    assert e.install(e.bundle("4.0"), device_key=lambda: THOR).slot == "b"     # ONNX variants run anywhere
    assert e.install(e.bundle("5.0"), device_key=lambda: None).slot == "a"


def test_every_model_is_checked_and_every_plan_named() -> None:
    """Models that pass do not end the check; a refusal names each plan's key, a plan without one, and this device;
    a model without variants has nothing to run."""
    older_orin = DeviceKey(ORIN.board, "35.4.1", "8.5.2.2", ORIN.sm)
    plan = {"precision": "fp16", "format": "plan"}
    models = {"det": [{"precision": "fp32", "format": "onnx", "file": "det.onnx"}],
              "orin": [{**plan, "file": "o.plan"}],
              "thor": [{**plan, "file": "t0.plan"}, {**plan, "file": "t1.plan"}, {**plan, "file": "nokey.plan"}]}
    keys = [{"model": "orin", "file": "o.plan", **ORIN.to_json()}, {"model": "thor", "file": "t0.plan",
            **THOR.to_json()}, {"model": "thor", "file": "t1.plan", **older_orin.to_json()}]
    with pytest.raises(BundleError) as caught:
        admission.runnable(archive.BundleManifest("2.0", "now", models, keys, ()), ORIN)
    assert caught.value.render() == (
        "bundle 2.0 holds nothing this device can run for model thor: no ONNX variant, and its plans are for (a plan"
        " without its device key); NVIDIA Jetson AGX Orin Developer Kit L4T 35.4.1 TensorRT 8.5.2.2 SM 8.7; NVIDIA"
        " Jetson AGX Thor Developer Kit L4T 38.2.0 TensorRT 10.13.3.9 SM 11.0\n"
        "Note: this device: NVIDIA Jetson AGX Orin Developer Kit L4T 36.4.3 TensorRT 10.3.0.30 SM 8.7; nothing was"
        " extracted, the active bundle is unchanged\n"
        "Hint: build the plans on a board like this one (edge build) and pack them, or pack the model's ONNX variant"
        " as well")
    with pytest.raises(BundleError, match="for model empty: no ONNX variant, and its plans are for no plan either"):
        admission.runnable(archive.BundleManifest("2.0", "now", {"det": models["det"], "empty": []}, [], ()), None)
