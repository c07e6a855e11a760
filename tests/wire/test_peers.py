"""Limits on what peers of the results socket may hold (edge/wire/peers.py), on real sockets: subscriptions
are counted per connection, only prefixes of edge's topics are applied, and a connection over a limit
is closed and logged in one summary line."""
from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.wire import peers, protocol
from edge.wire import publisher as publisher_module
from edge.wire.peers import Limits
from edge.wire.publisher import Publisher
from tests.conftest import PEER_S, wait_for
from tests.support.wire import LONGEST_PREFIX


def started(endpoint: str, ctx: zmq.Context, **limits: float) -> Publisher:
    pub = Publisher(endpoint, context=ctx, limits=Limits(**limits))
    pub.start()
    return pub


@pytest.fixture
def publisher(ctx: zmq.Context, tcp_endpoint: str) -> Iterator[Publisher]:
    pub = started(tcp_endpoint, ctx)
    yield pub
    pub.stop(5)


def sub_socket(ctx: zmq.Context, endpoint: str, *topics: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    return sock


def xsub(ctx: zmq.Context, endpoint: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A peer that speaks the subscription protocol directly, with a monitor that sees it disconnected."""
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(endpoint)
    return sock, monitor


def at_eof(sock: socket.socket) -> bool:
    """True once the daemon closed `sock` (libzmq's greeting bytes may come first)."""
    try:
        while data := sock.recv(4096, socket.MSG_DONTWAIT):
            assert data
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def disconnected(monitor: zmq.Socket) -> bool:
    assert monitor.poll(10_000), "the daemon did not close the connection"
    return recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED


@pytest.mark.parametrize(("prefix", "valid"), [
    (b"", True), (b"d", True), (b"det.", True), (b"det.people.", True), (b"det.people.cam_0", True),
    (b"sys.", True), (b"sys.heartbeat", True), (b"det.a.b.", False), (b"det..x", False), (b"sys.a.b", False),
    (b"results", False), (b"det.p\xc3\xa9", False), (b"det." + b"a" * 65, False), (b"\x00det.", False)])
def test_only_prefixes_of_edge_topics_are_valid(prefix: bytes, valid: bool) -> None:
    assert protocol.is_topic_prefix(prefix) is valid


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_sub_subscribed_to_the_longest_topic_stays_connected_and_receives(
        transport: str, ctx: zmq.Context, tcp_endpoint: str, ipc_endpoint: str) -> None:
    """libzmq 4.3.3 and later speak ZMTP 3.1 (ZeroMQ RFC 37), where a SUB sends its subscription as the SUBSCRIBE
    command: the name with its length byte, b"\\x09SUBSCRIBE", then the prefix (libzmq 4.3.5 src/v3_1_encoder.cpp,
    src/msg.hpp sub_cmd_name). MAXMSGSIZE bounds that whole frame body (src/v2_decoder.cpp size_ready), so a limit
    of ZMTP 3.0's flag byte plus the prefix cut such a subscriber off before the daemon saw it, again at each
    reconnection."""
    endpoint = tcp_endpoint if transport == "tcp" else ipc_endpoint
    assert len(LONGEST_PREFIX) == protocol.MAX_TOPIC_BYTES and protocol.is_topic_prefix(LONGEST_PREFIX)
    pub = started(endpoint, ctx)
    sub = sub_socket(ctx, endpoint, LONGEST_PREFIX)
    try:
        wait_for(lambda: pub.subscriptions == 1, PEER_S, "the subscription to the longest topic")
        pub.publish(LONGEST_PREFIX.decode(), {"kind": "det"})
        assert sub.poll(10_000) and sub.recv_multipart()[0] == LONGEST_PREFIX
        assert (pub.connections, pub.rejected_inbound) == (1, 0)
    finally:
        sub.close(linger=0)
        pub.stop(5)


def test_a_zmtp_3_0_peer_subscribed_to_the_longest_topic_receives(publisher: Publisher) -> None:
    """A ZMTP 3.0 peer (ZeroMQ RFC 23, NULL mechanism) subscribes with a message: a flag byte, then the prefix."""
    host, port = publisher.endpoint[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        zmtp_3_0_handshake(raw)
        zmtp_subscribe(raw, LONGEST_PREFIX)
        wait_for(lambda: publisher.subscriptions == 1, PEER_S, "the ZMTP 3.0 peer's subscription")
        publisher.publish(LONGEST_PREFIX.decode(), {"kind": "det"})
        assert zmtp_frame(raw) == (0x01, LONGEST_PREFIX)                   # the topic frame, more to follow
    assert publisher.rejected_inbound == 0


def zmtp_3_0_handshake(raw: socket.socket) -> None:
    """The handshake of a ZMTP 3.0 SUB (ZeroMQ RFC 23, NULL mechanism) on the connected `raw`."""
    raw.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31))
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    raw.sendall(bytes([0x04, len(ready)]) + ready)
    received_exactly(raw, 64)                                          # the daemon's greeting,
    assert zmtp_frame(raw)[1].startswith(b"\x05READY")                # its READY: the handshake is done


def zmtp_subscribe(raw: socket.socket, prefix: bytes) -> None:
    subscription = b"\x01" + prefix
    raw.sendall(bytes([0x00, len(subscription)]) + subscription)


def received_exactly(raw: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.recv(size - len(data))
        assert chunk, f"the daemon closed the connection after {len(data)} of {size} bytes"
        data += chunk
    return data


def zmtp_frame(raw: socket.socket) -> tuple[int, bytes]:
    """One ZMTP 3 frame: (flags, body); bit 0x02 of the flags is a long size, 0x04 a command."""
    flags = received_exactly(raw, 1)[0]
    size = int.from_bytes(received_exactly(raw, 8 if flags & 0x02 else 1), "big")
    return flags, received_exactly(raw, size)


def test_subscriptions_and_connections_are_counted(publisher: Publisher, ctx: zmq.Context) -> None:
    """20 subscribers to everything are 20 subscriptions (the old heartbeat said 1: one unique prefix)."""
    subs = [sub_socket(ctx, publisher.endpoint, b"") for _ in range(20)]
    both = sub_socket(ctx, publisher.endpoint, b"det.", b"sys.heartbeat")
    wait_for(lambda: (publisher.subscriptions, publisher.connections) == (22, 21), PEER_S, "22 subscriptions")
    both.setsockopt(zmq.UNSUBSCRIBE, b"det.")
    wait_for(lambda: publisher.subscriptions == 21, PEER_S, "an unsubscription to be counted")
    for sub in subs[:10]:
        sub.close(linger=0)
    wait_for(lambda: (publisher.subscriptions, publisher.connections) == (11, 11), PEER_S, "closed ones to leave")
    for sub in [*subs[10:], both]:
        sub.close(linger=0)
    wait_for(lambda: (publisher.subscriptions, publisher.connections) == (0, 0), PEER_S, "everyone to leave")


def test_the_count_comes_back_exactly_when_connections_with_refused_subscriptions_close(
        ctx: zmq.Context, tcp_endpoint: str) -> None:
    """In XPUB_MANUAL libzmq notes each subscription a connection sends, also one that the daemon then refuses
    and one inside a multipart message, and when the connection closes it sends one unsubscription without
    metadata per prefix noted (libzmq 4.3.5 src/xpub.cpp: xread_activated, xpipe_terminated). Those for refused
    prefixes must not take the subscriptions of the connections that hold the same prefixes."""
    pub = started(tcp_endpoint, ctx, subscriptions_per_peer=2)
    try:
        holders = [sub_socket(ctx, tcp_endpoint, b"det.a", b"det.b"), sub_socket(ctx, tcp_endpoint, b"det.c")]
        wait_for(lambda: pub.subscriptions == 3, PEER_S, "the holders' three subscriptions")
        over = sub_socket(ctx, tcp_endpoint, b"det.a", b"det.b", b"det.c")     # one over its limit of 2
        invalid = sub_socket(ctx, tcp_endpoint, b"sys.", b"results")             # not a prefix of an edge topic
        multipart, monitor = xsub(ctx, tcp_endpoint)
        multipart.send_multipart([b"junk", b"\x01det.c"])                        # libzmq notes the last part
        wait_for(lambda: pub.rejected_inbound >= 3, PEER_S, "the three refusals")
        for sock in (over, invalid, multipart, monitor):
            sock.close(linger=0)
        wait_for(lambda: pub.connections == 2, PEER_S, "the refused peers to leave")
        late = sub_socket(ctx, tcp_endpoint, b"sys.heartbeat")                  # after them
        wait_for(lambda: (pub.subscriptions, pub.connections) == (4, 3), PEER_S, "the holders' three and the late one")
        for sock in (*holders, late):
            sock.close(linger=0)
        wait_for(lambda: (pub.subscriptions, pub.connections) == (0, 0), PEER_S, "everyone to leave")
    finally:
        pub.stop(5)


def test_a_message_that_is_not_a_valid_subscription_closes_its_connection(publisher: Publisher,
                                                                          ctx: zmq.Context) -> None:
    good = sub_socket(ctx, publisher.endpoint, b"det.")
    for junk in (b"\x01results", b"\x07hello", b"\x01det.a.b.c"):
        peer, monitor = xsub(ctx, publisher.endpoint)
        peer.send(b"\x01det.a")
        peer.send(junk)
        assert disconnected(monitor)
        peer.close(linger=0)
        monitor.close(linger=0)
    assert publisher.rejected_inbound >= 3
    wait_for(lambda: publisher.subscriptions == 1, PEER_S, "only the good subscription to stay")
    publisher.publish("det.a.c", {"kind": "det"})
    assert good.poll(10_000) and good.recv_multipart()[0] == b"det.a.c"
    good.close(linger=0)


def test_a_connection_holds_at_most_its_limit_of_subscriptions(ctx: zmq.Context, tcp_endpoint: str) -> None:
    pub = started(tcp_endpoint, ctx, subscriptions_per_peer=3)
    peer, monitor = xsub(ctx, tcp_endpoint)
    for n in range(3):
        peer.send(b"\x01det.t%d" % n)
    wait_for(lambda: pub.subscriptions == 3, PEER_S, "three subscriptions")
    peer.send(b"\x01det.t3")
    assert disconnected(monitor) and pub.rejected_inbound == 1
    peer.close(linger=0)
    monitor.close(linger=0)
    pub.stop(5)


def remembered(pub: Publisher) -> int:
    """How many connections the daemon keeps a record of (what each one was noted for)."""
    return len(pub._subscriptions._peers)


def test_a_connection_keeps_its_limit_however_many_connections_come_and_go(ctx: zmq.Context,
                                                                          ipc_endpoint: str) -> None:
    """Issue 16: connection C holds its limit, then more connections than the daemon used to remember (the
    last 4 x `peers`, 8 here) each subscribe once and close. C's record must live as long as C: its next new
    prefix is refused and closes it, a prefix it holds already counts once, and once everyone has left the
    count and the records are back to 0. Each newcomer takes the lowest free fd number, the one the newcomer
    before it freed, so it also starts from an empty record on a reused fd and is not taken for the closed one."""
    pub = started(ipc_endpoint, ctx, peers=2, subscriptions_per_peer=3)
    held = ctx.socket(zmq.XSUB)
    held.setsockopt(zmq.LINGER, 0)
    held.setsockopt(zmq.RECONNECT_IVL, -1)           # once closed by the daemon, it stays closed
    monitor = held.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    held.connect(ipc_endpoint)
    try:
        for n in range(3):
            held.send(b"\x01det.c%d" % n)
        wait_for(lambda: pub.subscriptions == 3, PEER_S, "C's three subscriptions")
        for n in range(12):
            other = sub_socket(ctx, ipc_endpoint, b"det.o%d" % n)
            wait_for(lambda: pub.subscriptions == 4, PEER_S, f"newcomer {n}'s subscription")
            other.close(linger=0)
            wait_for(lambda: (pub.subscriptions, pub.connections) == (3, 1), PEER_S, f"newcomer {n} to leave")
        pub.publish("det.c1.cam", {"kind": "det"})
        assert held.poll(10_000) and held.recv_multipart()[0] == b"det.c1.cam"     # C's subscriptions hold
        held.send(b"\x01det.c0")                    # noted once by libzmq: the same one subscription
        held.send(b"\x01det.c3")                    # number 4, over C's limit
        assert disconnected(monitor)
        assert pub.rejected_inbound == 1
        wait_for(lambda: (pub.subscriptions, pub.connections, remembered(pub)) == (0, 0, 0), PEER_S,
                 "everyone to leave")
    finally:
        held.close(linger=0)
        monitor.close(linger=0)
        pub.stop(5)


class Stall:
    """Holds the publishing thread, as it packs a message of kind `stall`, until released (in place of
    edge.wire.publisher.pack_sent); libzmq queues what peers send meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        pack_sent = publisher_module.pack_sent

        def stalling(message: Any, **added: int) -> bytes:
            if message.get("kind") == "stall":
                self.holding.set()
                self.release.wait(30)
            return pack_sent(message, **added)
        monkeypatch.setattr(publisher_module, "pack_sent", stalling)


def test_messages_read_after_their_connection_closed_are_judged_but_close_nothing(
        ctx: zmq.Context, ipc_endpoint: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The publishing thread can read a connection's messages after the gate saw it close, when its fd number
    may be a new connection's. They are judged and counted as usual, but nothing is applied for them and no
    fd shut down. Here the closed one sent one subscription over its limit: refusing it shut down the
    newcomer, which took the fd numbers the closed one freed (the lowest free ones). It also sent one prefix
    twice, which libzmq notes once (and unsubscribes once at the close, src/xpub.cpp xpipe_terminated): noted
    twice, that left a surplus that one of the newcomer's unsubscriptions took instead of its subscription."""
    path = ipc_endpoint[len("ipc://"):]
    with caplog.at_level(logging.INFO, logger="edge.publisher"):
        pub = started(ipc_endpoint, ctx, subscriptions_per_peer=3)
        stall = Stall(monkeypatch)
        try:
            pub.publish("sys.stall", {"kind": "stall"})
            assert stall.holding.wait(10), "the publishing thread did not send"
            with socket.socket(socket.AF_UNIX) as gone:
                gone.settimeout(10)
                gone.connect(path)
                zmtp_3_0_handshake(gone)
                wait_for(lambda: pub.connections == 1, PEER_S, "the gate to count the connection")
                for prefix in (b"det.g0", b"det.g0", b"det.g1", b"det.g2", b"det.g3"):
                    zmtp_subscribe(gone, prefix)
            wait_for(lambda: pub.connections == 0, PEER_S, "the gate to see it close")
            with socket.socket(socket.AF_UNIX) as newcomer:
                newcomer.settimeout(10)
                newcomer.connect(path)
                zmtp_3_0_handshake(newcomer)
                zmtp_subscribe(newcomer, b"det.g0")
                stall.release.set()
                assert pub.wait_for_subscriber(10), "the newcomer's subscription was not applied"
                pub.publish("det.g0.cam", {"kind": "det"})
                assert zmtp_frame(newcomer) == (0x01, b"det.g0.cam")
            wait_for(lambda: (pub.subscriptions, pub.connections, remembered(pub)) == (0, 0, 0), PEER_S,
                     "everyone to leave")
            assert pub.rejected_inbound == 1
        finally:
            stall.release.set()
            pub.stop(5)                                      # logs the summary line now
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert lines and lines[-1].endswith("the last refusal: rejected subscription number 4 on one connection (limit 3)")


def test_connections_over_the_limit_are_closed_at_once_and_logged_in_one_line(
        ctx: zmq.Context, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Idle connections (no handshake) are counted and closed too: they hold an fd each."""
    endpoint = f"ipc://{tmp_path}/r.sock"
    with caplog.at_level(logging.INFO, logger="edge.publisher"):
        pub = started(endpoint, ctx, peers_per_source=5)
        idle = [socket.socket(socket.AF_UNIX) for _ in range(50)]
        for sock in idle:
            sock.connect(str(tmp_path / "r.sock"))
        wait_for(lambda: pub.refused_connections == 45 and pub.connections == 5, PEER_S, "45 refusals")
        wait_for(lambda: sum(map(at_eof, idle)) == 45, 10, "the daemon to close 45 of them")
        pub.stop(5)
    for sock in idle:
        sock.close()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "45 connections refused" in lines[0]
    assert "holds 5 connections (limit 5)" in lines[0]


def test_new_connections_are_admitted_at_a_bounded_rate(ctx: zmq.Context, tcp_endpoint: str) -> None:
    pub = started(tcp_endpoint, ctx, admit_burst=2, admit_per_s=0.001)
    subs = [sub_socket(ctx, tcp_endpoint, b"det.") for _ in range(3)]
    wait_for(lambda: pub.subscriptions == 2 and pub.refused_connections >= 1, PEER_S, "the third to be refused")
    for sub in subs:
        sub.close(linger=0)
    pub.stop(5)


@pytest.mark.parametrize(("address", "source"), [
    ("localhost:1000:1001:4242", "uid 1000"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1"),
    ("2001:db8:1::5", "2001:db8:1::5"), ("fe80::1:2:3", "fe80::1:2:3"), ("1:2::3", "1:2::3"), ("1:2:3::", "1:2:3::"),
    ("::ffff:10.0.0.1", "::ffff:10.0.0.1")])
def test_a_zap_address_names_its_source(address: str, source: str) -> None:
    """libzmq 4.3.5 gives ZAP the peer's numeric host (getnameinfo NI_NUMERICHOST), and for ipc appends the
    peer's ':uid:gid:pid' (SO_PEERCRED) to 'localhost' (src/stream_engine_base.cpp get_peer_address, src/ip.cpp
    get_peer_ip_address). An IPv6 host has colons of its own: with three or four, one was taken for ipc's
    form and rate-limited as 'uid 1' or 'uid 2'."""
    assert peers._zap_source(address) == source


@pytest.mark.parametrize(("limits", "refusal"), [
    ({"peers_per_source": 1}, "uid {uid} holds 1 connections (limit 1)"),                # from the fd: SO_PEERCRED
    ({"admit_burst": 1, "admit_per_s": 0.001}, "uid {uid} connects faster than 0.001/s")])  # from ZAP's address
def test_an_ipc_peer_is_limited_as_its_uid(ctx: zmq.Context, ipc_endpoint: str, caplog: pytest.LogCaptureFixture,
                                           limits: dict[str, float], refusal: str) -> None:
    with caplog.at_level(logging.INFO, logger="edge.publisher"):
        pub = started(ipc_endpoint, ctx, **limits)
        subs = [sub_socket(ctx, ipc_endpoint, b"det.") for _ in range(2)]
        try:
            wait_for(lambda: pub.refused_connections >= 1, PEER_S, "the second connection to be refused")
        finally:
            for sub in subs:
                sub.close(linger=0)
            pub.stop(5)                                      # logs the summary line now
    assert any(refusal.format(uid=os.geteuid()) in r.getMessage() for r in caplog.records)


def test_peers_that_do_not_speak_zmtp3_are_refused_before_any_subscription(publisher: Publisher) -> None:
    """libzmq took such bytes for a ZMTP 1.0 peer and subscribed it to everything."""
    host, port = publisher.endpoint[len("tcp://"):].rsplit(":", 1)
    for junk in (b"\x05\x00\x01abcd" * 100, b"GET / HTTP/1.1\r\n\r\n", b"\xff" + b"\0" * 8 + b"\x7f\x01\x00"):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(junk)
            wait_for(lambda sock=raw: at_eof(sock), PEER_S, "the daemon to close the connection")
    wait_for(lambda: publisher.connections == 0, PEER_S, "the junk connections to be closed")
    assert publisher.subscriptions == 0 and publisher.rejected_inbound == 0


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512));"
            " from edge.wire.peers import raise_open_files_limit; raise_open_files_limit();"
            " print(resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "(512, 512)"


def _limits_under(nofile: int) -> subprocess.CompletedProcess[str]:
    code = (f"import logging, resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}));"
            " logging.basicConfig(level=logging.WARNING, format='%(message)s');"
            " from edge.wire.peers import Limits; print(Limits().within_open_files().peers)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)


def test_a_low_open_files_limit_lowers_the_peer_limit_and_says_what_to_raise_it_to() -> None:
    out = _limits_under(150)
    peers = int(out.stdout)
    assert 1 <= peers < Limits().peers
    assert f"leaves room for {peers} subscriber connections, not 128" in out.stderr
    assert "a burst of more connections than that at once can reach the limit" in out.stderr
    assert "ulimit -n to " in out.stderr


def test_an_ample_open_files_limit_warns_of_nothing() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open files limit here is {hard}, below the 4096 this test needs")
    out = _limits_under(4096)
    assert int(out.stdout) == Limits().peers and out.stderr == ""
