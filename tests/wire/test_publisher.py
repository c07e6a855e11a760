"""The publisher on real sockets: schema, seq, drops, endpoint in use, garbage from subscribers."""
from __future__ import annotations

import copy
import os
import re
import socket
import stat
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from edge.config.wire import IPC_PATH_BYTES, check_endpoint
from edge.errors import EdgeError
from edge.wire import protocol
from edge.wire import publisher as publisher_module
from edge.wire.client import Subscriber
from edge.wire.publisher import LATENCY_BUCKETS_S, LatencyHistogram, Publisher
from tests.conftest import PEER_S, wait_for

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture
def publisher(ctx: zmq.Context, tcp_endpoint: str) -> Iterator[Publisher]:
    pub = Publisher(tcp_endpoint, context=ctx)
    pub.start()
    yield pub
    pub.stop(5)


def subscribed(pub: Publisher, ctx: zmq.Context, topics: list[str]) -> Subscriber:
    sub = Subscriber(pub.endpoint, topics=topics, context=ctx)
    assert pub.wait_for_subscriber(10)
    return sub


def det(frame: int) -> dict:
    return protocol.det_message(task="t", camera="c", frame=frame, t_capture_ns=1, precision="fp32", engine="e",
                                size=(10, 10), detections=[])


def test_messages_follow_schema_with_contiguous_seq(publisher: Publisher, ctx: zmq.Context) -> None:
    sub = subscribed(publisher, ctx, ["det."])
    sender = publisher.sender("det.t.c")
    for frame in range(5):
        assert sender.publish(det(frame))
    messages = [sub.recv(timeout=5) for _ in range(5)]
    assert [m.seq for m in messages] == [0, 1, 2, 3, 4] and sub.missed == 0 and sub.invalid == 0
    assert all(m.payload["t_publish_ns"] >= 1 and m.payload["v"] == 1 for m in messages)
    wait_for(lambda: sender.published == 5, 5, "published counter")
    assert list(sender.latencies_ns) == [m.payload["t_publish_ns"] - 1 for m in messages]    # capture at 1 ns
    assert list(sender.sent_ns) == [m.payload["t_publish_ns"] for m in messages]
    sub.close()


def test_the_message_handed_over_is_never_changed(publisher: Publisher, ctx: zmq.Context) -> None:
    """The hand-off runs one way: the publisher adds seq, t_publish_ns and t_wall_ns to what it packs, not to the
    producer's message (it wrote them into the producer's dict until issue 17)."""
    sub = subscribed(publisher, ctx, ["det.", "sys."])
    messages = [det(0), protocol.event_message("camera.lost", camera="c")]
    before = copy.deepcopy(messages)
    assert publisher.publish("det.t.c", messages[0]) and publisher.publish("sys.event", messages[1])
    received = [sub.recv(timeout=5) for _ in messages]
    assert [m.payload["seq"] for m in received] == [0, 0]
    assert messages == before
    sub.close()


def documented_example() -> bytes:
    """The bytes of docs/protocol.md's "Byte-level example" (each line's leading hex pairs)."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    block = text.split("## Byte-level example", 1)[1].split("```", 2)[1]
    pairs: list[str] = []
    for line in block.splitlines():
        for token in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            pairs.append(token)
    return bytes.fromhex("".join(pairs))


def test_what_is_sent_is_the_documented_example_byte_for_byte(ctx: zmq.Context, ipc_endpoint: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The wire format: the message built by protocol.det_message, then seq, t_publish_ns and t_wall_ns, as
    docs/protocol.md shows it (its clocks fixed here, its seq 7)."""
    monkeypatch.setattr(publisher_module, "time", types.SimpleNamespace(monotonic_ns=lambda: 36_000_000,
                                                                        time_ns=lambda: 1_764_100_000_000_000_000))
    pub = Publisher(ipc_endpoint, context=ctx)
    pub.start()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"det.")
    raw.connect(ipc_endpoint)
    try:
        assert pub.wait_for_subscriber(10)
        for _ in range(7):
            pub.next_seq("det.objects.cam0")
        assert pub.publish("det.objects.cam0", protocol.det_message(
            task="objects", camera="cam0", frame=42, t_capture_ns=1000, precision="fp32",
            engine="yolov3-tiny.onnx:onnxruntime:fp32", size=(768, 576), detections=[(412.5, 96.0, 440.1, 181.3,
                                                                                       0.8125, 0)]))
        assert raw.poll(10_000)
        topic, body = raw.recv_multipart()
    finally:
        raw.close(linger=0)
        pub.stop(5)
    expected = documented_example()
    assert topic == b"det.objects.cam0" and len(expected) == 231       # the page says 231 bytes
    assert body == expected


def test_events_carry_their_details(publisher: Publisher, ctx: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    sub = subscribed(publisher, ctx, ["sys.event"])
    with caplog.at_level("INFO", logger="edge.publisher"):
        publisher.event("camera.lost", {"camera": "rear", "reason": "timeout"})
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event ")]
    assert events == ["event camera.lost {'camera': 'rear', 'reason': 'timeout'}"]   # the gate's summary may log too
    message = sub.recv(timeout=5)
    assert message.topic == "sys.event"
    assert {k: message.payload[k] for k in ("kind", "event", "camera", "reason")} == {
        "kind": "event", "event": "camera.lost", "camera": "rear", "reason": "timeout"}
    sub.close()


def test_full_queue_drops_and_counts_without_blocking(ctx: zmq.Context, tcp_endpoint: str) -> None:
    pub = Publisher(tcp_endpoint, queue_size=2, context=ctx)   # not started: nothing drains the queue
    sender = pub.sender("det.t.c")
    results = [sender.publish(det(i)) for i in range(5)]
    assert results == [True, True, False, False, False] and (sender.dropped, sender.published) == (3, 0)
    assert pub.dropped_other == 0                               # a sender's drops are its own
    assert pub.next_seq("det.t.c") == 5                         # dropped messages used their seq: gaps show


def test_tcp_endpoint_in_use(publisher: Publisher, ctx: zmq.Context) -> None:
    second = Publisher(publisher.endpoint, context=ctx)
    with pytest.raises(EdgeError, match="cannot bind results endpoint") as info:
        second.start()
    assert str(info.value).endswith("Hint: another edge daemon (or another program) uses it; stop it or set"
                                    " output.results / EDGE_RESULTS_ENDPOINT to a free endpoint")


def test_bad_endpoint_says_what_to_check(ctx: zmq.Context) -> None:
    with pytest.raises(EdgeError, match="cannot bind results endpoint tcp://127.0.0.1:notaport") as info:
        Publisher("tcp://127.0.0.1:notaport", context=ctx).start()
    assert str(info.value).endswith("Hint: check the endpoint syntax and that its directory exists and is writable")


def test_ipc_endpoint_in_use_and_stale_socket_file(ctx: zmq.Context, ipc_endpoint: str) -> None:
    first = Publisher(ipc_endpoint, context=ctx)
    first.start()
    with pytest.raises(EdgeError, match="already in use by a running process") as info:
        Publisher(ipc_endpoint, context=ctx).start()
    assert str(info.value).endswith(f"\nNote: pid of this process: {os.getpid()}\nHint: stop the other edge"
                                    " daemon (systemctl stop edge-runtime) or set output.results /"
                                    " EDGE_RESULTS_ENDPOINT to another path")
    first.stop(5)
    path = ipc_endpoint[len("ipc://"):]
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)     # a socket file nobody listens on
    try:
        if os.path.exists(path):
            os.unlink(path)
        stale.bind(path)
    finally:
        stale.close()
    again = Publisher(ipc_endpoint, context=ctx)
    again.start()                                                 # stale file: replaced, not refused
    sub = subscribed(again, ctx, ["det."])                        # and the new socket really serves
    assert again.publish("det.t.c", det(7))
    message = sub.recv(timeout=5)
    assert message is not None and message.payload["frame"] == 7 and message.seq == 0
    sub.close()
    again.stop(5)


def test_restart_on_the_same_ipc_endpoint_serves_subscribers(ctx: zmq.Context, ipc_endpoint: str) -> None:
    """A service restart in one process: stop, then bind the same path again at once."""
    for frame in range(2):
        pub = Publisher(ipc_endpoint, context=ctx)
        pub.start()
        sub = subscribed(pub, ctx, ["det."])
        assert pub.publish("det.t.c", det(frame))
        message = sub.recv(timeout=5)
        assert message is not None and message.payload["frame"] == frame
        sub.close()
        pub.stop(5)


def test_ipc_directory_is_created(ctx: zmq.Context, tmp_path) -> None:
    pub = Publisher(f"ipc://{tmp_path}/a/b/results.sock", context=ctx)
    pub.start()
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o750 & ~umask()
    pub.stop(5)


def test_the_longest_ipc_path_the_config_accepts_serves_a_subscriber(ctx: zmq.Context, tmp_path: Path) -> None:
    """IPC_PATH_BYTES (edge/config/wire.py) is the system's bound, not a guess: a path of that many bytes serves,
    and one byte more, which the config refuses, fails the subscriber's connect."""
    directory = f"{tmp_path}/"
    endpoint = f"ipc://{directory}{'a' * (IPC_PATH_BYTES - len(directory))}"
    pub = Publisher(check_endpoint(endpoint), context=ctx)
    pub.start()
    sub = subscribed(pub, ctx, ["det."])
    assert pub.publish("det.t.c", det(1))
    message = sub.recv(timeout=5)
    assert message is not None and message.payload["frame"] == 1
    sub.close()
    pub.stop(5)
    with pytest.raises(ValueError, match=f"has {IPC_PATH_BYTES + 1} bytes"):
        check_endpoint(endpoint + "a")
    with pytest.raises(zmq.ZMQError):
        Subscriber(endpoint + "a", context=ctx)


def umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_latency_quantiles_and_rate(ctx: zmq.Context) -> None:
    sender = Publisher("inproc://unused", context=ctx).sender("det.t.c")
    assert sender.latency_ms(0.5) is None and sender.rate(10**9, 2.0) == 0
    sender.latencies_ns.extend(ms * 1_000_000 for ms in (40, 10, 30, 20))
    assert [sender.latency_ms(q) for q in (0.0, 0.5, 0.99, 1.0)] == [10.0, 30.0, 40.0, 40.0]
    sender.sent_ns.extend((1, 10**9, 3 * 10**9, 4 * 10**9))
    assert sender.rate(4 * 10**9, 2.0) == 1.0                  # 3 s and 4 s are within the 2 s before 4 s


def test_latency_histogram_buckets_include_their_bound() -> None:
    histogram = LatencyHistogram()
    for ns in (0, 5_000_000, 5_000_001, 1_000_000_000, 1_000_000_001, 7_000_000_000):
        histogram.observe_ns(ns)
    buckets = histogram.snapshot()
    counts = buckets.counts
    assert buckets.bounds_s == LATENCY_BUCKETS_S and len(counts) == len(LATENCY_BUCKETS_S) + 1
    assert counts[0] == 2                                       # le 0.005: 0 and exactly 5 ms
    assert counts[1] == 3                                       # le 0.01: and 5 ms + 1 ns
    assert counts[LATENCY_BUCKETS_S.index(1.0)] == 4            # le 1: and exactly 1 s
    assert counts[-1] == 6 and buckets.sum_ns == 9_010_000_002  # +Inf: all


def test_counters_start_at_zero_and_stop_before_start_is_harmless(ctx: zmq.Context, tcp_endpoint: str) -> None:
    pub = Publisher(tcp_endpoint, queue_size=1, context=ctx)
    assert (pub.subscriptions, pub.connections, pub.rejected_inbound, pub.refused_connections,
            pub.dropped_other) == (0, 0, 0, 0, 0)
    for _ in range(3):
        pub.event("camera.lost", {"camera": "c"})          # not started: nothing drains the queue
    assert pub.dropped_other == 2
    pub.stop(1)


def test_stop_sends_what_is_queued_ends_its_thread_and_can_repeat(ctx: zmq.Context, ipc_endpoint: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    pub = Publisher(ipc_endpoint, context=ctx)
    with caplog.at_level("INFO", logger="edge.publisher"):
        pub.start()
    threads = set(threading.enumerate()) - before
    assert {t.name for t in threads} == {"publisher", "publisher-gate"}
    assert all(t.daemon for t in threads)                               # never block the interpreter's exit
    assert f"publishing results on {ipc_endpoint}" in [r.getMessage() for r in caplog.records]
    sub = subscribed(pub, ctx, ["det."])
    for frame in range(5):
        pub.publish("det.t.c", det(frame))
    pub.stop(5)                                                          # at once: the queue is sent first
    assert not any(t.is_alive() for t in threads)
    assert [sub.recv(timeout=5).payload["frame"] for _ in range(5)] == list(range(5))
    pub.stop(5)
    sub.close()


def test_inproc_endpoint_uses_the_given_context(ctx: zmq.Context) -> None:
    pub = Publisher("inproc://results", context=ctx)
    pub.start()
    sub = subscribed(pub, ctx, ["det."])
    pub.publish("det.t.c", det(3))
    assert sub.recv(timeout=5).payload["frame"] == 3
    sub.close()
    pub.stop(5)


def test_garbage_from_peers_does_not_stop_publishing(publisher: Publisher, ctx: zmq.Context) -> None:
    good = subscribed(publisher, ctx, ["det."])
    host, port = publisher.endpoint[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:   # not even ZMTP
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4)
    junk = ctx.socket(zmq.XSUB)
    junk.setsockopt(zmq.LINGER, 0)
    junk.connect(publisher.endpoint)
    junk.send(b"\x07not a subscription")
    junk.send(b"\x01" + b"x" * 5000)                                      # over the inbound size limit
    wait_for(lambda: publisher.rejected_inbound >= 1, 10, "the junk message to be seen and ignored")
    publisher.publish("det.t.c", det(0))
    message = good.recv(timeout=5)
    assert message is not None and message.payload["frame"] == 0
    junk.close(linger=0)
    good.close()


def test_wait_for_subscriber_times_out(publisher: Publisher) -> None:
    assert not publisher.wait_for_subscriber(0.05)


def test_a_stalled_subscriber_loses_its_own_messages_not_the_others(ctx: zmq.Context, tcp_endpoint: str) -> None:
    """libzmq drops per subscriber at the high-water mark: a subscriber that never reads sees gaps in `seq`,
    while one that keeps up gets everything and the lane counts every message as published. Sent in
    batches the reader has taken before the next, so keeping up does not depend on thread timing."""
    pub = Publisher(tcp_endpoint, sndhwm=300, queue_size=2000, context=ctx)
    pub.start()
    subscribers = {}
    for count, (name, rcvhwm, prefix) in enumerate((("stalled", 1, b"det."), ("reader", 1000, b"det.t")), 1):
        sub = subscribers[name] = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, rcvhwm)
        sub.setsockopt(zmq.SUBSCRIBE, prefix)         # distinct prefixes: the XPUB reports each one
        sub.connect(tcp_endpoint)
        wait_for(lambda n=count: pub.subscriptions >= n, PEER_S, f"{name} to subscribe")
    sender = pub.sender("det.t.c")
    read: list[int] = []
    try:
        for batch in range(10):
            for frame in range(batch * 100, batch * 100 + 100):
                assert sender.publish({**det(frame), "engine": "x" * 10_000})
            while len(read) < batch * 100 + 100 and subscribers["reader"].poll(10_000):
                read.append(msgpack.unpackb(subscribers["reader"].recv_multipart()[1])["seq"])
        stalled = _seqs(subscribers["stalled"], 1000)
    finally:
        for sub in subscribers.values():
            sub.close(linger=0)
        pub.stop(5)
    assert sender.published == 1000 and sender.dropped == 0
    assert read == list(range(1000))
    assert 0 < len(stalled) < 1000 and stalled == sorted(set(stalled))        # gaps in its seq, nothing else


def _seqs(sub: zmq.Socket, most: int) -> list[int]:
    """The seqs `sub` receives, up to `most` (or until nothing more comes for 1 s)."""
    seqs: list[int] = []
    while len(seqs) < most and sub.poll(1000):
        seqs.append(msgpack.unpackb(sub.recv_multipart()[1])["seq"])
    return seqs


def test_an_ipc_endpoint_never_replaces_a_file(ctx: zmq.Context, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(EdgeError, match="exists and is not a socket; edge does not replace it") as info:
        Publisher(f"ipc://{victim}", context=ctx).start()
    assert "found: a regular file" in str(info.value) and victim.read_text() == "keep me"
    (tmp_path / "dir.sock").mkdir()
    with pytest.raises(EdgeError, match="found: a directory"):
        Publisher(f"ipc://{tmp_path}/dir.sock", context=ctx).start()


@pytest.mark.parametrize("parent", ["file", "proc"])
def test_an_ipc_directory_that_cannot_be_made_is_a_clear_error(ctx: zmq.Context, tmp_path, parent: str) -> None:
    (tmp_path / "plain").write_text("")
    where = {"file": tmp_path / "plain" / "sub", "proc": Path("/proc/sys/edge-test")}[parent]  # root cannot either
    with pytest.raises(EdgeError, match=f"cannot create the directory of results endpoint ipc://{where}/r.sock"):
        Publisher(f"ipc://{where}/r.sock", context=ctx).start()


def test_a_clean_stop_removes_the_socket_file(ctx: zmq.Context, ipc_endpoint: str) -> None:
    path = Path(ipc_endpoint[len("ipc://"):])
    publisher = Publisher(ipc_endpoint, context=ctx)
    publisher.start()
    assert path.is_socket()
    publisher.stop(5)
    assert not path.exists()


def test_the_results_socket_file_lets_the_daemons_group_subscribe(ctx: zmq.Context, tmp_path: Path) -> None:
    """Connecting to a unix socket needs write permission on its file (unix(7), "Pathname socket ownership and
    permissions"). Under the unit's UMask=0027 the socket was 0750: only the `edge` user could subscribe, never
    vehicle software running as a user in group `edge`. The directory stays 0750 and this user's."""
    old = os.umask(0o027)
    try:
        pub = Publisher(f"ipc://{tmp_path}/run/results.sock", context=ctx)
        pub.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "results.sock").st_mode) == 0o660
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750
    finally:
        pub.stop(5)
