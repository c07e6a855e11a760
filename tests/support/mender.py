"""Mender's real client and artifact tool against a bundle root in a temp dir: a vehicle whose Update Module is
this checkout's shipped scripts/mender/edge-bundle, run by `mender` 3.4 inside `unshare --mount` with the module
directory and /etc/mender bound to temp dirs (/work/shared/reference/real-parts-for-tests.md, "Mender's client,
standalone"), so nothing on this machine changes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.bundles import NAMESPACES, Env
from tests.support.daemon import ROOT, edge_cmd

PACKAGES = "mender-client mender-artifact"        # scripts/test.sh MENDER_PACKAGES
MODULES = "/usr/share/mender/modules/v3"          # the client reads modules from there only (3.4)
TIMEOUT_S = 120


def missing() -> str | None:
    """Why the real Mender runs cannot happen here, else None."""
    if os.geteuid() != 0:
        return "not root: mount --bind inside `unshare --mount` needs it"
    if not NAMESPACES or shutil.which("unshare") is None:
        return "no working `unshare --mount` here"
    tools = [t for t in ("mender", "mender-artifact") if shutil.which(t) is None]
    if tools:
        return f"{' and '.join(tools)} not installed (apt-get install {PACKAGES}; scripts/test.sh does as root)"
    if not Path(MODULES).is_dir():
        return f"{MODULES} is missing (the mender-client package makes it): nothing to bind the test's modules over"
    return None


class Vehicle:
    """One board with Mender's client: its module directory (the shipped module, whose `edge` is this checkout
    with the test's root, keys and control socket), /etc/mender, Mender's data directory and configuration."""

    def __init__(self, env: Env, endpoint: str, *, device_type: str = "jetson-agx-orin",
                 health_timeout: float = 5.0) -> None:
        self.env = env
        base = env.tmp / "vehicle"
        self.modules, self.etc, self.data = base / "modules", base / "etc", base / "data"
        for d in (self.modules, self.etc, self.data):
            d.mkdir(parents=True)
        self.conf = base / "mender.conf"
        self.conf.write_text('{"ArtifactVerifyKey": ""}\n')
        (self.etc / "artifact_info").write_text("artifact_name=factory\n")
        (self.data / "device_type").write_text(f"device_type={device_type}\n")
        edge = base / "prefix" / ".venv" / "bin" / "edge"
        edge.parent.mkdir(parents=True)
        edge.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m edge \"$@\" --root {env.root}"
                        f" --keys {env.trusted} --control {endpoint} --no-restart --health-timeout {health_timeout}\n")
        edge.chmod(0o755)
        shipped = (ROOT / "scripts" / "mender" / "edge-bundle").read_text()   # as provision-target.sh renders it
        module = self.modules / "edge-bundle"
        module.write_text(shipped.replace("/opt/edge/.venv/bin/edge", str(edge)))
        module.chmod(0o755)

    def command(self, *args: str, inside: str = "", after: str = "") -> list[str]:
        """`mender ARGS` in a mount namespace of its own; `inside`: shell run there first (e.g. a tmpfs), `after`:
        shell run there after it (its exit status is mender's)."""
        mender = " ".join(["mender", "-c", str(self.conf), "-d", str(self.data), "--no-syslog", *args])
        run = f"{mender}; rc=$?; {after}; exit $rc" if after else f"exec {mender}"
        return ["unshare", "--mount", "sh", "-c",
                f"mount --bind {self.modules} {MODULES} && mkdir -p /etc/mender && mount --bind {self.etc}"
                f" /etc/mender && {inside}{' && ' if inside else ''}{run}"]

    def mender(self, *args: str, inside: str = "", after: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args, inside=inside, after=after), capture_output=True, text=True,
                              timeout=TIMEOUT_S)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`mender ARGS` in a process group of its own (killed whole with os.killpg)."""
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def artifact(self) -> str:
        """The artifact name Mender's client reports as installed."""
        return self.mender("show-artifact").stdout.strip()


def pack(env: Env, version: str, *device_types: str, device_type: str = "jetson-agx-orin",
         key: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`edge bundle pack --mender` (this checkout's CLI) of a repository whose plan was built on `device_type`."""
    from tests.support.bundles import make_repository

    source = make_repository(env.tmp / f"src-{version}" / "det", seed=version.encode(), device_type=device_type)
    return subprocess.run(edge_cmd("bundle", "pack", str(source), "--key", str(key or env.keys.private), "--version",
                                   version, "--out", str(env.tmp / f"{version}.bundle"), "--mender",
                                   *(a for t in (device_types or (device_type,)) for a in ("--device-type", t))),
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
