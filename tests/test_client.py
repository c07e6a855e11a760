"""The subscriber helper against a real ZeroMQ publisher socket owned by the test."""
from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import zmq

from edge import protocol
from edge.client import Subscriber
from tests.test_protocol import det


@pytest.fixture
def pair(ctx: zmq.Context, ipc_endpoint: str) -> Iterator[tuple[zmq.Socket, Subscriber]]:
    """An XPUB in the role of the daemon and a connected Subscriber whose subscription has arrived."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)          # report every subscription, also repeated ones
    pub.bind(ipc_endpoint)
    sub = Subscriber(ipc_endpoint, topics=["det."], context=ctx, max_bytes=4096)
    assert pub.poll(10_000), "subscription did not arrive"
    assert pub.recv() == b"\x01det."
    yield pub, sub
    sub.close()
    pub.close(linger=0)


def send(pub: zmq.Socket, seq: int, topic: str = "det.t.c", **override: object) -> None:
    pub.send_multipart([topic.encode(), protocol.pack(det(seq=seq, **override))])


def test_receives_valid_messages_and_counts_seq_gaps(pair) -> None:
    pub, sub = pair
    for seq in (0, 1, 5, 6):
        send(pub, seq)
    seqs = [sub.recv(timeout=5).seq for _ in range(4)]
    assert seqs == [0, 1, 5, 6] and sub.missed == 3
    assert sub.recv(timeout=0.05) is None


def test_gaps_are_tracked_per_topic(pair) -> None:
    pub, sub = pair
    send(pub, 0, "det.a.c")
    send(pub, 0, "det.b.c")
    send(pub, 1, "det.a.c")
    assert [sub.recv(timeout=5).topic for _ in range(3)] == ["det.a.c", "det.b.c", "det.a.c"]
    assert sub.missed == 0


def test_garbage_is_skipped_and_counted(pair) -> None:
    pub, sub = pair
    pub.send_multipart([b"det.t.c", b"\xc1\xc1"])                       # not msgpack
    pub.send_multipart([b"det.t.c", protocol.pack(det(v=9))])           # wrong schema version
    pub.send_multipart([b"det.t.c", b"a", b"b"])                         # three frames
    pub.send_multipart([b"det.\xff", protocol.pack(det())])             # topic not UTF-8
    pub.send_multipart([b"det.t.c", msgpack.packb(msgpack.ExtType(1, b""))])
    send(pub, 7)
    message = sub.recv(timeout=5)
    assert message is not None and message.seq == 7
    assert sub.invalid == 5 and "ext type 1" in sub.last_error


def test_oversized_message_is_skipped_and_the_next_one_arrives(pair) -> None:
    pub, sub = pair
    pub.send_multipart([b"det.t.c", protocol.pack(det(seq=0, engine="x" * 10_000))])   # over max_bytes=4096
    send(pub, 1)
    message = sub.recv(timeout=5)
    assert message is not None and message.seq == 1
    assert sub.invalid == 1 and "exceeds the 4096-byte limit" in sub.last_error


def test_latest_only_returns_the_newest_waiting_message(pair, ctx: zmq.Context, ipc_endpoint: str) -> None:
    pub, _ = pair
    latest = Subscriber(ipc_endpoint, topics=["det."], latest_only=True, context=ctx)
    assert pub.poll(10_000) and pub.recv() == b"\x01det."
    for seq in range(5):
        send(pub, seq)
    first = latest.recv(timeout=5)
    got = [first.seq]
    while got[-1] != 4:                       # everything waiting is drained; the newest is returned
        got.append(latest.recv(timeout=5).seq)
    assert got[-1] == 4 and len(got) <= 5
    latest.close()


def test_silence_notice_stays_quiet_while_messages_flow() -> None:
    from edge.client import SilenceNotice

    notice = SilenceNotice("tcp://127.0.0.1:5555", after_s=3, every_s=10, now=0.0)
    for t in range(1, 60):                       # one message a second for a minute: never a notice
        notice.heard(now=t - 0.5)
        assert notice.due(now=float(t)) is None
    assert notice.received == 59


def test_silence_notice_first_after_delay_then_every_period_and_resets() -> None:
    from edge.client import SilenceNotice

    notice = SilenceNotice("tcp://127.0.0.1:5555", topics=["det.", ""], after_s=3, every_s=10, now=100.0)
    assert notice.due(now=102.9) is None
    first = notice.due(now=103.0)
    assert first == ("nothing received from tcp://127.0.0.1:5555 in 3 s; is `edge run` running and publishing"
                     " there on topic(s) det.? (still waiting)")
    assert [notice.due(now=t) for t in (103.1, 110.0, 112.9)] == [None, None, None]    # no spamming
    assert "in 13 s" in notice.due(now=113.0)
    assert "in 60 s" in notice.due(now=160.0) and notice.due(now=162.0) is None       # one notice after a stall
    notice.heard(now=170.0)
    assert notice.due(now=172.0) is None
    later = notice.due(now=173.0, invalid=2)
    assert later.startswith("nothing valid received from tcp://127.0.0.1:5555 for 3 s since the last message"
                            " (skipped 2 invalid message(s))")
    assert SilenceNotice("tcp://127.0.0.1:5555", after_s=0, now=0.0).due(now=1e6) is None    # 0: off


def test_silence_notice_says_whether_the_ipc_socket_file_exists(tmp_path, ctx: zmq.Context) -> None:
    from edge.client import SilenceNotice

    def text(endpoint: str) -> str:
        return SilenceNotice(endpoint, after_s=1, now=0.0).due(now=1.0)

    assert f"(no socket file {tmp_path}/none.sock)" in text(f"ipc://{tmp_path}/none.sock")
    (tmp_path / "plain").write_text("")
    assert f"({tmp_path}/plain exists but is not a socket)" in text(f"ipc://{tmp_path}/plain")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/bound.sock")
    assert f"(socket file {tmp_path}/bound.sock exists)" in text(f"ipc://{tmp_path}/bound.sock")
    pub.close(linger=0)
