"""scripts/deploy-bundle.sh and scripts/rollback.sh: --help, --dry-run's exact commands, and real runs against a
stand-in target: `ssh` and `rsync` on PATH run on this machine in a home of the test's own (the only fakes: there
is no Jetson to log in to), the real `edge bundle install` into a temp root, and a stand-in daemon behind a real
control socket. deploy verifies the bundle here first with this checkout's real `edge bundle verify`. shellcheck
runs over every script in tests/scripts/test_scripts.py."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.daemon import systemd
from tests.support.bundles import Env, StandIn, replace_member, rewrite, serving
from tests.support.daemon import ROOT

EDGE = "/opt/edge/.venv/bin/edge"


def script(name: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, **env})


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("name", ["deploy-bundle.sh", "rollback.sh"])
def test_help_and_unknown_arguments(name: str) -> None:
    help_text = script(name, "--help")
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout and "Exit status" in help_text.stdout
    wrong = script(name, "--frobnicate", "host")
    assert wrong.returncode == 2 and "unknown argument '--frobnicate'" in wrong.stderr
    assert "the end of the options" in help_text.stdout
    missing = script(name)
    assert missing.returncode == 2 and "need HOST" in missing.stderr


def test_deploy_dry_run_verifies_and_prints_the_exact_commands(tmp_path: Path) -> None:
    env = Env(tmp_path)
    bundle = tmp_path / "fleet-2026.11.bundle"
    env.bundle("2026.11").rename(bundle)
    result = script("deploy-bundle.sh", "--dry-run", "--keys", str(env.trusted), "edge@jetson-17", str(bundle))
    assert result.returncode == 0, result.stderr
    assert f"{bundle}: bundle 2026.11 created" in result.stdout and "every sha256 matches" in result.stdout
    assert commands(result.stdout) == [
        "ssh edge@jetson-17 mkdir -p -m 0700 edge-bundles",
        f"rsync --partial --times --compress-level=0 {bundle} edge@jetson-17:edge-bundles/fleet-2026.11.bundle",
        f"ssh edge@jetson-17 sudo {EDGE} bundle install edge-bundles/fleet-2026.11.bundle --restart"
        " --health-timeout 120",
        "ssh edge@jetson-17 rm -f edge-bundles/fleet-2026.11.bundle",
        f"ssh edge@jetson-17 sudo {EDGE} bundle list"]
    assert "deploy-bundle: would copy" in result.stdout and "would install it on edge@jetson-17" in result.stdout
    assert result.stdout.endswith("deploy-bundle: dry run: fleet-2026.11.bundle verified here; nothing was copied"
                                  " to edge@jetson-17 or installed there\n")
    options = script("deploy-bundle.sh", "--dry-run", "--no-restart", "--no-sudo", "--edge", "/usr/local/bin/edge",
                     "--health-timeout", "30", "--keys", str(env.trusted), "root@jetson-17", str(bundle))
    assert ("ssh root@jetson-17 /usr/local/bin/edge bundle install edge-bundles/fleet-2026.11.bundle"
            " --health-timeout 30") in commands(options.stdout)
    downgrade = script("deploy-bundle.sh", "--dry-run", "--allow-downgrade", "--keys", str(env.trusted), "jetson-17",
                       str(bundle))
    assert (f"ssh jetson-17 sudo {EDGE} bundle install edge-bundles/fleet-2026.11.bundle --restart --allow-downgrade"
            " --health-timeout 120") in commands(downgrade.stdout)


def test_deploy_refuses_a_missing_bundle_and_words_the_remote_shell_would_split(tmp_path: Path) -> None:
    missing = script("deploy-bundle.sh", "--dry-run", "jetson", str(tmp_path / "none.bundle"))
    assert missing.returncode == 1 and "no bundle file" in missing.stderr
    spaced = tmp_path / "my bundle"
    spaced.write_bytes(b"x")
    split = script("deploy-bundle.sh", "--dry-run", "jetson", str(spaced))
    assert split.returncode == 1 and "BUNDLE's file name 'my bundle' must be a plain word" in split.stderr
    assert not commands(split.stdout)


def targets(name: str, tmp_path: Path) -> list[str]:
    """HOST, and for deploy a BUNDLE file: the checks of the other words come before the bundle is verified."""
    if name == "rollback.sh":
        return ["jetson-17"]
    (tmp_path / "fleet.bundle").write_bytes(b"x")
    return ["jetson-17", str(tmp_path / "fleet.bundle")]


# --edge is the first word after sudo (or of the remote shell's command): `--edge -s` would be `sudo -s`, a root
# shell. sudo takes a word with '=' that does not start with '/' for an environment variable, not the command
# (sudo 1.9, src/parse_args.c, is_envar), and so does the shell.
@pytest.mark.parametrize("name", ["deploy-bundle.sh", "rollback.sh"])
@pytest.mark.parametrize("edge", ["-s", "--help", "-", "FOO=bar", ".", "..", "bin/edge", "./edge", "edge;id"])
def test_an_edge_that_is_no_absolute_path_or_command_name_is_refused(tmp_path: Path, name: str, edge: str) -> None:
    result = script(name, "--dry-run", "--edge", edge, *targets(name, tmp_path))
    assert result.returncode == 1 and not commands(result.stdout)
    assert (f"--edge '{edge}' is neither an absolute path nor a command name (letters, digits, ._+-; not starting"
            f" with '-' or '.'): sudo and the target's shell would take it for an option or a variable. Hint: --edge"
            f" {EDGE}") in result.stderr


def test_edge_may_be_a_command_name() -> None:
    result = script("rollback.sh", "--dry-run", "--edge", "edge", "jetson-17")     # /usr/local/bin/edge there
    assert commands(result.stdout)[0] == "ssh jetson-17 sudo edge bundle rollback --restart --health-timeout 120"


# The edge CLI's --health-timeout takes seconds up to a day (edge.cli.common.MAX_SECONDS); the scripts take whole
# seconds up to the longest start the unit allows (edge.daemon.systemd.START_CAP_S: the daemon never extends
# its start past it).
@pytest.mark.parametrize("name", ["deploy-bundle.sh", "rollback.sh"])
@pytest.mark.parametrize("seconds", ["99999999999999999999999", str(int(systemd.START_CAP_S) + 1), "0", "010", "-1",
                                     "1.5", "1e3", "0x10", "inf", "nan", "120s"])
def test_a_health_timeout_out_of_range_is_refused(tmp_path: Path, name: str, seconds: str) -> None:
    result = script(name, "--dry-run", "--health-timeout", seconds, *targets(name, tmp_path))
    assert result.returncode == 1 and not commands(result.stdout)
    assert (f"--health-timeout '{seconds}' is not a whole number of seconds from 1 to {int(systemd.START_CAP_S)}."
            " Hint: --health-timeout 120 (the default)") in result.stderr


@pytest.mark.parametrize("seconds", ["1", str(int(systemd.START_CAP_S))])
def test_a_health_timeout_in_range_is_passed_on(seconds: str) -> None:
    result = script("rollback.sh", "--dry-run", "--health-timeout", seconds, "jetson-17")
    assert commands(result.stdout)[0] == \
        f"ssh jetson-17 sudo {EDGE} bundle rollback --restart --health-timeout {seconds}"


@pytest.mark.parametrize("name", ["deploy-bundle.sh", "rollback.sh"])
@pytest.mark.parametrize("host", ["-oProxyCommand=sh", "/tmp/evil", "a:b"])
def test_a_host_that_ssh_or_rsync_would_misread_is_refused(tmp_path: Path, name: str, host: str) -> None:
    """After --, a HOST may start with '-': ssh would take -oProxyCommand=... for an option and run it here. rsync
    reads a HOST with '/' as a local path (the bundle went to /tmp/evil:edge-bundles/ here), and one with ':' as
    host:path."""
    result = script(name, "--dry-run", "--", host, *targets(name, tmp_path)[1:])
    assert result.returncode == 1 and not commands(result.stdout)
    assert (f"HOST '{host}' is not an ssh destination: a plain word (letters, digits, ._+@-) not starting with '-',"
            " without '/' or ':' (rsync would read those as a local path or a host:path). Hint: user@host, or a Host"
            " of ~/.ssh/config") in result.stderr


@pytest.mark.parametrize("name", ["deploy-bundle.sh", "rollback.sh"])
@pytest.mark.parametrize("option", ["--edge", "--health-timeout"])
def test_an_option_without_its_value_is_a_usage_error(tmp_path: Path, name: str, option: str) -> None:
    """`--health-timeout ""` ended in bash's own message (`line 34: 2: --health-timeout needs seconds`), exit 1."""
    for args in ((*targets(name, tmp_path), option), (option, "", *targets(name, tmp_path))):
        result = script(name, "--dry-run", *args)
        assert result.returncode == 2 and f"{name.removesuffix('.sh')}: {option} needs " in result.stderr
        assert "line " not in result.stderr and not commands(result.stdout)


def test_double_dash_ends_the_options(tmp_path: Path) -> None:
    """As getopt's: what follows is HOST (and BUNDLE), also a bundle whose name starts with '-', which reaches
    rsync and edge as ./-NAME, a file."""
    rollback = script("rollback.sh", "--dry-run", "--", "jetson-17")
    assert rollback.returncode == 0, rollback.stderr
    assert rollback.stdout == script("rollback.sh", "--dry-run", "jetson-17").stdout
    assert script("rollback.sh", "--dry-run", "--", "--force", "jetson-17").returncode == 2   # no option after --
    env = Env(tmp_path)
    env.bundle("2026.11").rename(tmp_path / "-fleet.bundle")
    deploy = script("deploy-bundle.sh", "--dry-run", "--keys", str(env.trusted), "--", "jetson-17", "-fleet.bundle",
                    cwd=tmp_path)
    assert deploy.returncode == 0, deploy.stderr
    assert "./-fleet.bundle: bundle 2026.11 created" in deploy.stdout
    assert commands(deploy.stdout)[1:3] == [
        "rsync --partial --times --compress-level=0 ./-fleet.bundle jetson-17:edge-bundles/-fleet.bundle",
        f"ssh jetson-17 sudo {EDGE} bundle install edge-bundles/-fleet.bundle --restart --health-timeout 120"]


def test_rollback_dry_run_prints_the_exact_commands() -> None:
    result = script("rollback.sh", "--dry-run", "jetson-17")
    assert result.returncode == 0, result.stderr
    assert commands(result.stdout) == [f"ssh jetson-17 sudo {EDGE} bundle rollback --restart --health-timeout 120",
                                       f"ssh jetson-17 sudo {EDGE} bundle list"]
    assert result.stdout.endswith("rollback: dry run: nothing was changed on jetson-17; the commands above would"
                                  " roll it back\n")
    forced = script("rollback.sh", "--dry-run", "--force", "--no-restart", "jetson-17")
    assert commands(forced.stdout)[0] == f"ssh jetson-17 sudo {EDGE} bundle rollback --force --health-timeout 120"


# ------------------------------------------------------------------------------------------------ real runs

class Target:
    """This machine as the target: `ssh HOST CMD...` runs CMD in `home` with sh (as sshd would, joined by spaces),
    `rsync ... SRC HOST:DST` copies to home/DST, and `edge` there is this checkout with the test's root, trusted
    keys and control socket."""

    def __init__(self, tmp_path: Path, env: Env, endpoint: str) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self._tool("ssh", f'shift; cd {self.home} && exec sh -c "$*"')
        self._tool("rsync", 'eval "src=\\${$(($# - 1))}" "dst=\\${$#}"\ncp "$src" "HOME/${dst#*:}"'.replace(
            "HOME", str(self.home)))
        self.edge = self._tool("edge", f'case "$2" in\n'
                                       f'  list) extra="--root {env.root}" ;;\n'
                                       f'  *) extra="--root {env.root} --keys {env.trusted} --control {endpoint}" ;;\n'
                                       f'esac\n'
                                       f'PYTHONPATH={ROOT} exec {sys.executable} -m edge "$@" $extra')
        self.path = f"{self.bin}:{os.environ['PATH']}"

    def _tool(self, name: str, body: str) -> Path:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return path


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Env, StandIn, Target]]:
    env = Env(tmp_path)
    env.install(env.bundle("1.0"))
    with serving(tmp_path) as (stand_in, endpoint):
        yield env, stand_in, Target(tmp_path, env, endpoint)


def deploy(target: Target, bundle: Path, *extra: str, keys: Path) -> subprocess.CompletedProcess[str]:
    return script("deploy-bundle.sh", "--no-restart", "--no-sudo", "--edge", str(target.edge), "--health-timeout",
                  "1", "--keys", str(keys), *extra, "jetson", str(bundle), PATH=target.path)


def test_deploy_installs_and_lists(target: tuple[Env, StandIn, Target]) -> None:
    env, _, tgt = target
    result = deploy(tgt, env.bundle("2.0"), keys=env.trusted)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed bundle 2.0" in result.stdout and "health: healthy after" in result.stdout
    assert "current -> b" in result.stdout and "deploy-bundle: jetson runs 2.0.bundle" in result.stdout
    assert os.readlink(env.root / "current") == "b"
    assert list((tgt.home / "edge-bundles").iterdir()) == []          # the copy on the target is removed


def test_deploy_of_an_older_bundle_is_refused_unless_allowed(target: tuple[Env, StandIn, Target]) -> None:
    env, _, tgt = target
    assert deploy(tgt, env.bundle("2.0"), keys=env.trusted).returncode == 0
    before = env.state()
    refused = deploy(tgt, env.tmp / "1.0.bundle", keys=env.trusted)
    assert refused.returncode == 1 and "edge bundle: error: bundle 1.0 is older than bundle 2.0" in refused.stderr
    assert "install on jetson failed (exit 1)" in refused.stderr and env.state() == before
    allowed = deploy(tgt, env.tmp / "1.0.bundle", "--allow-downgrade", keys=env.trusted)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "installed because of --allow-downgrade" in allowed.stdout and "installing bundle 1.0 below" in \
        allowed.stderr
    assert os.readlink(env.root / "current") == "a" and "highest committed version: 2.0" in allowed.stdout


def test_deploy_that_is_not_healthy_rolls_back_and_fails(target: tuple[Env, StandIn, Target]) -> None:
    env, stand_in, tgt = target
    stand_in.mode = "stuck"
    before = env.snapshot()
    result = deploy(tgt, env.bundle("2.0"), keys=env.trusted)
    assert result.returncode == 1
    assert "edge bundle: error: bundle 2.0 in slot b failed: the daemon was not healthy within 1 s" in result.stderr
    assert "rolled back: current -> a again" in result.stderr
    assert "deploy-bundle: install on jetson failed (exit 1)" in result.stderr
    assert "bundle list" not in result.stdout and env.snapshot() == before


def test_deploy_of_a_bundle_the_target_does_not_trust_fails(target: tuple[Env, StandIn, Target],
                                                            tmp_path: Path) -> None:
    env, _, tgt = target
    from edge.deploy import keys

    stranger = keys.generate(tmp_path / "stranger")
    before = env.snapshot()
    result = deploy(tgt, env.bundle("2.0", key=stranger.private), keys=tmp_path / "stranger")   # trusted here only
    assert result.returncode == 1 and "which this device does not trust" in result.stderr
    assert "install on jetson failed" in result.stderr and env.snapshot() == before


def test_deploy_stops_at_a_bad_bundle_before_anything_reaches_the_target(target: tuple[Env, StandIn, Target],
                                                                       tmp_path: Path) -> None:
    env, _, tgt = target
    before = env.snapshot()
    tampered = rewrite(env.bundle("2.0"), tmp_path / "tampered.bundle", replace_member("det/det.onnx", b"tampered"))
    for extra in ((), ("--dry-run",)):
        result = deploy(tgt, tampered, *extra, keys=env.trusted)
        assert result.returncode == 1, result.stdout
        assert "checksum mismatch: det/det.onnx" in result.stderr
        assert f"deploy-bundle: {tampered} failed verification here (see above); nothing copied to jetson" \
            in result.stderr
        assert not commands(result.stdout) and not (tgt.home / "edge-bundles").exists()    # no ssh, no rsync
    assert env.snapshot() == before


@pytest.mark.skipif(Path("/etc/edge/trusted-keys").exists(), reason="this machine has /etc/edge/trusted-keys, the"
                    " other place deploy-bundle.sh looks for keys")
def test_deploy_without_keys_to_verify_with_stops(target: tuple[Env, StandIn, Target], tmp_path: Path) -> None:
    env, _, tgt = target
    result = script("deploy-bundle.sh", "jetson", str(env.bundle("2.0")), HOME=str(tmp_path / "technician"),
                    PATH=tgt.path)
    assert result.returncode == 1 and "no keys to verify" in result.stderr and "--keys DIR" in result.stderr
    assert not (tgt.home / "edge-bundles").exists()


def test_rollback_goes_back_and_says_why_when_it_cannot(target: tuple[Env, StandIn, Target]) -> None:
    env, _, tgt = target
    args = ("--no-restart", "--no-sudo", "--edge", str(tgt.edge), "--health-timeout", "5", "jetson")
    nothing = script("rollback.sh", *args, PATH=tgt.path)
    assert nothing.returncode == 1 and "nothing to roll back to: slot b is empty" in nothing.stderr
    env.install(env.bundle("2.0"))
    result = script("rollback.sh", *args, PATH=tgt.path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rolled back to bundle 1.0" in result.stdout and os.readlink(env.root / "current") == "a"
