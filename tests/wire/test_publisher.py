"""The publisher on real sockets: schema, seq, drops, endpoint in use, garbage from subscribers."""
from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from edge.errors import EdgeError
from edge.pipeline.lanes import LaneStats
from edge.wire import protocol
from edge.wire.client import Subscriber
from edge.wire.publisher import Publisher
from tests.conftest import PEER_S, wait_for


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
    stats = LaneStats("t", "c")
    for frame in range(5):
        assert publisher.publish("det.t.c", det(frame), stats)
    messages = [sub.recv(timeout=5) for _ in range(5)]
    assert [m.seq for m in messages] == [0, 1, 2, 3, 4] and sub.missed == 0 and sub.invalid == 0
    assert all(m.payload["t_publish_ns"] >= 1 and m.payload["v"] == 1 for m in messages)
    wait_for(lambda: stats.published == 5, 5, "published counter")
    assert list(stats.latencies_ns) == [m.payload["t_publish_ns"] - 1 for m in messages]    # capture at 1 ns
    sub.close()


def test_events_carry_their_details(publisher: Publisher, ctx: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    sub = subscribed(publisher, ctx, ["sys.event"])
    with caplog.at_level("INFO", logger="edge.publisher"):
        publisher.event("camera.lost", {"camera": "rear", "reason": "timeout"})
    assert caplog.records[-1].getMessage() == "event camera.lost {'camera': 'rear', 'reason': 'timeout'}"
    message = sub.recv(timeout=5)
    assert message.topic == "sys.event"
    assert {k: message.payload[k] for k in ("kind", "event", "camera", "reason")} == {
        "kind": "event", "event": "camera.lost", "camera": "rear", "reason": "timeout"}
    sub.close()


def test_full_queue_drops_and_counts_without_blocking(ctx: zmq.Context, tcp_endpoint: str) -> None:
    pub = Publisher(tcp_endpoint, queue_size=2, context=ctx)   # not started: nothing drains the queue
    stats = LaneStats("t", "c")
    results = [pub.publish("det.t.c", det(i), stats) for i in range(5)]
    assert results == [True, True, False, False, False] and stats.dropped_publisher == 3
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
    assert again.publish("det.t.c", det(7), LaneStats("t", "c"))
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
        assert pub.publish("det.t.c", det(frame), LaneStats("t", "c"))
        message = sub.recv(timeout=5)
        assert message is not None and message.payload["frame"] == frame
        sub.close()
        pub.stop(5)


def test_ipc_directory_is_created(ctx: zmq.Context, tmp_path) -> None:
    pub = Publisher(f"ipc://{tmp_path}/a/b/results.sock", context=ctx)
    pub.start()
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o750 & ~umask()
    pub.stop(5)


def umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_latency_quantiles() -> None:
    stats = LaneStats("t", "c")
    assert stats.latency_ms(0.5) is None
    stats.latencies_ns.extend(ms * 1_000_000 for ms in (40, 10, 30, 20))
    assert [stats.latency_ms(q) for q in (0.0, 0.5, 0.99, 1.0)] == [10.0, 30.0, 40.0, 40.0]


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
        pub.publish("det.t.c", det(frame), LaneStats("t", "c"))
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
    publisher.publish("det.t.c", det(0), LaneStats("t", "c"))
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
    stats = LaneStats("t", "c")
    read: list[int] = []
    try:
        for batch in range(10):
            for frame in range(batch * 100, batch * 100 + 100):
                assert pub.publish("det.t.c", {**det(frame), "engine": "x" * 10_000}, stats)
            while len(read) < batch * 100 + 100 and subscribers["reader"].poll(10_000):
                read.append(msgpack.unpackb(subscribers["reader"].recv_multipart()[1])["seq"])
        stalled = _seqs(subscribers["stalled"], 1000)
    finally:
        for sub in subscribers.values():
            sub.close(linger=0)
        pub.stop(5)
    assert stats.published == 1000 and stats.dropped_publisher == 0
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
