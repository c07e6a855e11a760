"""systemd: the unit checked by `systemd-analyze`, and the daemon under a real NOTIFY_SOCKET (an AF_UNIX
datagram socket the test binds, as systemd does): READY once started, STATUS, WATCHDOG=1 while frames flow,
no WATCHDOG=1 while a lane is stalled, STOPPING on SIGTERM."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.daemon.systemd import Notifier
from edge.tasks.detector import YoloDetector
from tests.conftest import wait_for
from tests.support.daemon import ROOT, start
from tests.support.systemd import Systemd

UNIT = ROOT / "systemd" / "edge-runtime.service"
EXPOSURE_LIMIT = 3.5       # systemd's "OK" band; what is left open and why is written in the unit


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    manager = Systemd(tmp_path / "notify.sock")
    yield manager
    manager.close()


def test_the_notifier_speaks_to_path_and_abstract_sockets(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0edge-test-" + tmp_path.name)
        assert Notifier({"NOTIFY_SOCKET": "@edge-test-" + tmp_path.name}).send(READY=1, STATUS="two\nlines")
        assert sock.recv(100) == b"READY=1\nSTATUS=two lines"
    assert not Notifier({}).send(READY=1) and not Notifier({}).enabled
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).address is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}).send(READY=1)   # no manager: run on


def _config(tmp_path: Path, demo: Any) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(f"""version: 1
cameras:
  - id: cam0
    uri: file://{demo.video}?loop=1&realtime=0
tasks:
  - name: objects
    type: detector
    model: {demo.model}
    cameras: [cam0]
    threads: 1
output:
  results: ipc://{tmp_path}/r.sock
control:
  endpoint: ipc://{tmp_path}/c.sock
supervisor:
  telemetry: none
""")
    return path


def test_the_daemon_says_ready_pings_while_frames_flow_and_says_stopping(demo: Any, tmp_path: Path,
                                                                        systemd: Systemd) -> None:
    proc = start(_config(tmp_path, demo), env_extra={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})
    try:
        ready = systemd.until("READY", 60)
        assert ready["READY"] == "1" and "objects.cam0 fp32" in ready["STATUS"]
        pings = [systemd.until("WATCHDOG") for _ in range(3)]           # every 0.5 s while frames flow
        assert all(p["WATCHDOG"] == "1" for p in pings)
        assert any("fps; supervisor NORMAL" in m.get("STATUS", "") for m in systemd.messages)
        proc.send_signal(signal.SIGTERM)
        assert systemd.until("STOPPING")["STOPPING"] == "1"
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_a_stalled_lane_stops_the_watchdog_pings(demo: Any, tmp_path: Path, systemd: Systemd,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: postprocessing hangs from the fifth frame on (like an engine that never returns).
    The pings stop within a watchdog interval and STATUS names the lane; systemd would then restart edge."""
    hang, release = threading.Event(), threading.Event()
    original, calls = YoloDetector.postprocess, []

    def hanging(self: YoloDetector, outputs: Any, meta: Any) -> Any:
        calls.append(1)
        if len(calls) >= 5:
            hang.set()
            release.wait(60)
        return original(self, outputs, meta)
    monkeypatch.setattr(YoloDetector, "postprocess", hanging)
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")                       # 0.6 s: pings every 0.3 s
    config = parse_config(_config(tmp_path, demo).read_text(), source="t", base_dir=tmp_path, environ={})
    service = Service(config)
    service.start()
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        assert systemd.until("READY")["READY"] == "1"
        wait_for(hang.is_set, 60, "the lane to hang")
        statuses = []
        for _ in range(20):                                             # heartbeats come at 1 Hz: 20 s at most
            statuses.append(systemd.until("STATUS", 10)["STATUS"])
            if statuses[-1].startswith("stalled"):
                break
        assert statuses[-1] == "stalled: objects.cam0", statuses[-3:]
        seen = len(systemd.messages)
        for _ in range(3):                                              # a second of messages: no ping among them
            assert "WATCHDOG" not in systemd.until("STATUS", 10)
        assert all("WATCHDOG" not in m for m in systemd.messages[seen:])
    finally:
        release.set()
        stop.set()
        runner.join(30)
        service.stop()


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `edge` (systemd-analyze needs it to exist)."""
    edge = shutil.which("edge", path=str(Path(sys.executable).parent)) or sys.executable
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/edge/.venv/bin/edge", edge))
    return unit


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed here (Debian: apt-get install systemd)")


@needs_systemd
def test_the_unit_verifies_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(_unit_here(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "Ignoring" not in result.stderr, result.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "User=edge",
                 "StateDirectory=edge", "RuntimeDirectory=edge"):
        assert line in text


@needs_systemd
def test_the_units_exposure_stays_within_its_limit(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(_unit_here(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    score = float(line.split(":")[1].split()[0])
    assert score <= EXPOSURE_LIMIT, result.stdout


# What systemd 249 (JetPack 6) makes of the unit, from its source (systemd/systemd-stable, tag v249; the same up to
# v251; read, not copied):
# - src/core/unit.c, unit_patch_contexts(): PrivateDevices=yes turns DevicePolicy=auto into closed; ProtectClock=yes
#   adds DeviceAllow=char-rtc r, whatever the policy (man/systemd.exec.xml of v249 says so too); DynamicUser=yes
#   turns PrivateTmp= on.
# - src/core/cgroup.c, cgroup_apply_devices(): DevicePolicy=closed, or auto with any DeviceAllow= entry, is an
#   allow-list of the entries plus /dev/null, zero, full, random, urandom, tty and ptmx (src/core/bpf-devices.c,
#   bpf_devices_allow_list_static); strict is the entries alone. Only auto without entries leaves /dev open.
# - ProtectKernelLogs=yes only makes /dev/kmsg and /proc/kmsg inaccessible (src/core/namespace.c,
#   protect_kernel_logs_table): no allow-list.
# - src/core/execute.c, get_supplementary_groups(): a SupplementaryGroups= name that does not resolve fails the
#   start with EXIT_GROUP (216/GROUP).
# systemd 252 adds char-rtc only where a policy is set already (commit 63857bf4f7, "core: allow-list char-rtc with
# ProtectClock=yes only if needed", systemd#18142), too late for JetPack 6.
STATIC_NODES = ["/dev/null rwm", "/dev/zero rwm", "/dev/full rwm", "/dev/random rwm", "/dev/urandom rwm",
                "/dev/tty rwm", "/dev/ptmx rwm"]
# What CUDA opens on JetPack 6 (nvgpu) and what V4L2 cameras are (/proc/devices group video4linux); the exact
# /dev/nvhost-* set is to be listed on a board (/work/shared/reference/jetson-notes.md, 8.2).
GPU_AND_CAMERAS = {"/dev/nvmap", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu", "/dev/nvhost-as-gpu",
                   "char-video4linux"}


def unit_settings(text: str, section: str = "[Service]") -> list[tuple[str, str]]:
    """The assignments of one section of a unit file, in order (keys such as DeviceAllow= repeat)."""
    settings, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line
        elif current == section:
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def enabled(settings: list[tuple[str, str]], key: str) -> bool:
    values = [value for k, value in settings if k == key]
    return bool(values) and values[-1].lower() in ("1", "yes", "true", "on")


def device_allow_list_v249(settings: list[tuple[str, str]]) -> list[str] | None:
    """The DeviceAllow= entries systemd 249 enforces for these settings; None when /dev is left open."""
    policy, entries = "auto", []
    for key, value in settings:
        if key == "DevicePolicy":
            policy = value
        elif key == "DeviceAllow":
            entries = entries + [value] if value else []          # an empty assignment resets the list
    if enabled(settings, "PrivateDevices") and policy == "auto":
        policy = "closed"
    if enabled(settings, "ProtectClock"):
        entries = entries + ["char-rtc r"]
    if policy == "auto" and not entries:
        return None
    return entries if policy == "strict" else STATIC_NODES + entries


@pytest.mark.parametrize(("settings", "allowed"), [
    ([("ProtectClock", "yes")], [*STATIC_NODES, "char-rtc r"]),
    ([("PrivateDevices", "yes")], STATIC_NODES),
    ([("DeviceAllow", "/dev/nvmap rw")], [*STATIC_NODES, "/dev/nvmap rw"]),
    ([("DevicePolicy", "strict"), ("DeviceAllow", "/dev/nvmap rw")], ["/dev/nvmap rw"]),
    ([("DeviceAllow", "/dev/nvmap rw"), ("DeviceAllow", ""), ("ProtectKernelLogs", "yes")], None),
    ([("PrivateDevices", "no"), ("ProtectClock", "no"), ("DevicePolicy", "auto")], None),
], ids=["ProtectClock", "PrivateDevices", "DeviceAllow", "strict", "reset-and-kernel-logs", "off"])
def test_the_systemd_249_device_rules(settings: list[tuple[str, str]], allowed: list[str] | None) -> None:
    assert device_allow_list_v249(settings) == allowed


def test_on_systemd_249_the_unit_leaves_the_gpu_and_camera_nodes_open() -> None:
    """JetPack 6 runs systemd 249: any allow-list there must name the GPU and camera nodes, or CUDA and every
    camera fail to open them (ProtectClock=yes alone did that)."""
    allowed = device_allow_list_v249(unit_settings(UNIT.read_text()))
    if allowed is not None:
        named = {spec for spec, _, access in (entry.partition(" ") for entry in allowed)
                 if {"r", "w"} <= set(access.strip() or "rwm")}
        assert GPU_AND_CAMERAS <= named, f"systemd 249 would let edge open only {allowed}"


def test_the_service_sees_the_hosts_argus_socket() -> None:
    """csi:// cameras: nvarguscamerasrc talks to nvargus-daemon through /tmp/argus_socket, which a private /tmp
    hides (dusty-nv/jetson-containers' run.sh mounts that socket into its containers for the same reason)."""
    settings = unit_settings(UNIT.read_text())
    assert not enabled(settings, "PrivateTmp") and not enabled(settings, "DynamicUser")
    after = [value for key, value in unit_settings(UNIT.read_text(), "[Unit]") if key == "After"]
    assert any("nvargus-daemon.service" in value.split() for value in after)


def test_the_unit_names_only_groups_every_jetpack_has() -> None:
    """video only; jtop comes from provision's drop-in where that group exists (tests/scripts/test_scripts.py)."""
    assert [value for key, value in unit_settings(UNIT.read_text()) if key == "SupplementaryGroups"] == ["video"]


def test_the_example_config_is_valid() -> None:
    config = parse_config((ROOT / "systemd" / "config.yaml").read_text(), source="systemd/config.yaml",
                          base_dir=ROOT, environ={})
    assert config.control.endpoint == "ipc:///run/edge/control.sock" and config.tasks[0].precision == "auto"
