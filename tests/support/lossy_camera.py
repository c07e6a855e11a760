"""An RTSP camera behind a lossy network, run as `python -m tests.support.lossy_camera TRANSPORT LOSS FRAMES` inside
a network namespace of its own (`unshare --net`, as root): brings up its loopback, serves STREAM with GStreamer's
RTSP server (tests/support/rtsp.py), reads it through edge's Camera, and once the camera delivers frames steadily,
drops LOSS of the packets on the loopback (`lose`), then reads FRAMES more frames and prints the camera's stats, its
frame steps and what dropped the packets as one JSON line. `lose` also tells a test whether this machine can."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

from edge.config.cameras import parse_uri
from edge.pipeline.cameras import Camera

# One RTP packet a frame (rtph264pay's mtu over the frame size; the loopback's MTU is 64 KiB): a lost packet is a
# lost frame, or, for a key frame, the frames up to the next one. 160x120 at 20 fps keeps the server cheap.
STREAM = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=20/1 ! x264enc"
          " tune=zerolatency threads=1 speed-preset=ultrafast key-int-max=20 ! rtph264pay mtu=60000 name=pay0 pt=96 )")
ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay")
STEADY_FRAMES = 20
PACKAGES = "iproute2 iptables"      # ip and tc; iptables where the kernel has no sch_netem (test.sh offers them)


def lose(share: float) -> str:
    """Drop `share` of the packets on this namespace's loopback (every packet crosses it once): `tc netem` where
    the kernel has sch_netem, else iptables' random `statistic` match. Which one did it; OSError says why neither
    could."""
    tried = []
    for command in (["tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", f"{share * 100:g}%"],
                    ["iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", f"{share:g}",
                     "-j", "DROP"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            tried.append(f"{command[0]}: {exc.strerror}")
            continue
        if done.returncode == 0:
            return " ".join(command)
        tried.append(f"{' '.join(command[:7])}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    raise OSError("; ".join(tried))


def main(transport: str, share: float, frames: int) -> None:
    from tests.conftest import free_port
    from tests.support import rtsp

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = free_port()
    server = rtsp.serve(port, rtsp.Media(STREAM, ELEMENTS))
    camera = Camera("cam", parse_uri(f"rtsp://127.0.0.1:{port}/live?transport={transport}"),
                    on_event=lambda name, details: None)
    try:
        camera.start()
        read(camera, STEADY_FRAMES)
        before = dataclasses.asdict(camera.stats)
        how = lose(share)
        longest = read(camera, frames)
        print(json.dumps({"before": before, "after": dataclasses.asdict(camera.stats), "loss": how,
                          "longest_wait_ms": round(longest * 1000)}), flush=True)
    finally:
        camera.stop(10)
        server.kill()
        server.wait(10)


def read(camera: Camera, count: int) -> float:
    """Wait until the camera captured `count` more frames (a minute, plus a second per 5 frames, at most); the
    longest wait between two of them, in s."""
    target, deadline = camera.stats.captured + count, time.monotonic() + 60 + count / 5
    seen, since, longest = camera.stats.captured, time.monotonic(), 0.0
    reader, last = camera.latest.register(), -1
    try:
        while camera.stats.captured < target:
            frame = camera.latest.get_after(reader, last, max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise SystemExit(f"{camera.stats.captured - target + count} of {count} frames before the deadline;"
                                 f" {camera.stats}")
            now, last = time.monotonic(), frame.index
            if camera.stats.captured > seen:
                longest, seen, since = max(longest, now - since), camera.stats.captured, now
    finally:
        camera.latest.unregister(reader)
    return longest


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
