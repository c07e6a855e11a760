"""The subscriber helper against a real ZeroMQ publisher socket owned by the test."""
from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import zmq

from edge.wire import protocol
from edge.wire.client import Subscriber
from tests.support.wire import det


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
    assert (sub.missed, sub.invalid, sub.last_error) == (0, 0, "")
    for seq in (0, 1, 5, 6):
        send(pub, seq)
    seqs = [sub.recv(timeout=5).seq for _ in range(4)]
    assert seqs == [0, 1, 5, 6] and sub.missed == 3
    assert sub.recv(timeout=0.05) is None


def test_gaps_are_tracked_per_topic(pair) -> None:
    """Each topic has its own seq: interleaved topics are no gap, a jump within one topic is."""
    pub, sub = pair
    sent = [("det.a.c", 0), ("det.b.c", 5), ("det.a.c", 1), ("det.b.c", 6), ("det.a.c", 3)]
    for topic, seq in sent:
        send(pub, seq, topic)
    assert [(m.topic, m.seq) for m in (sub.recv(timeout=5) for _ in sent)] == sent
    assert sub.missed == 1                      # a.c lost seq 2; one tracker for all topics would count 8


def test_restarted_or_repeated_seqs_are_not_gaps(pair) -> None:
    """Only forward jumps are losses: a daemon restart starts again at 0 (here twice in a row)."""
    pub, sub = pair
    seqs = [0, 1, 4, 0, 0, 2]
    for seq in seqs:
        send(pub, seq)
    assert [sub.recv(timeout=5).seq for _ in seqs] == seqs
    assert sub.missed == 2 + 1                  # 2 and 3 lost before the restart, 1 after it


def test_recv_without_timeout_waits_for_the_next_message(pair) -> None:
    pub, sub = pair
    send(pub, 3)
    assert sub.recv().seq == 3


def test_error_names_the_topic(pair) -> None:
    pub, sub = pair
    pub.send_multipart([b"det.t.c", protocol.pack(det(v=9))])
    send(pub, 1)
    assert sub.recv(timeout=5).seq == 1
    assert sub.last_error == "payload on 'det.t.c' has schema version 9, expected 1"


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


@pytest.fixture
def latest(ctx: zmq.Context) -> Iterator[tuple[zmq.Socket, Subscriber]]:
    """inproc: a message is in the subscriber's queue once send() returns, so everything sent is waiting."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("inproc://latest")
    sub = Subscriber("inproc://latest", topics=["det."], latest_only=True, context=ctx)
    assert pub.poll(10_000) and pub.recv() == b"\x01det."
    yield pub, sub
    sub.close()
    pub.close(linger=0)


def test_latest_only_returns_the_newest_waiting_message(latest) -> None:
    pub, latest = latest
    for seq in range(5):
        send(pub, seq)
    assert latest.recv(timeout=5).seq == 4      # the older four were drained, not returned
    assert latest.recv(timeout=0) is None
    assert latest.missed == 0                   # skipped on purpose is not lost upstream
    send(pub, 5)
    assert latest.recv(timeout=5).seq == 5


def test_latest_only_with_nothing_valid_waiting_returns_none(latest) -> None:
    pub, latest = latest
    pub.send_multipart([b"det.t.c", b"\xc1"])
    pub.send_multipart([b"det.t.c", protocol.pack(det(v=9))])
    assert latest.recv(timeout=0.5) is None and latest.invalid == 2     # waited out its timeout: nothing valid


def test_silence_notice_stays_quiet_while_messages_flow() -> None:
    from edge.wire.client import SilenceNotice

    notice = SilenceNotice("tcp://127.0.0.1:5555", after_s=3, every_s=10, now=0.0)
    for t in range(1, 60):                       # one message a second for a minute: never a notice
        notice.heard(now=t - 0.5)
        assert notice.due(now=float(t)) is None
    assert notice.received == 59


def test_silence_notice_first_after_delay_then_every_period_and_resets() -> None:
    from edge.wire.client import SilenceNotice

    notice = SilenceNotice("tcp://127.0.0.1:5555", topics=["det.", ""], after_s=3, every_s=10, now=100.0)
    assert notice.due(now=102.9) is None
    first = notice.due(now=103.0)
    assert first == ("nothing received from tcp://127.0.0.1:5555 in 3 s (edge serves tcp only with CURVE: pass"
                     " --curve CLIENT.key_secret SERVER.key); is `edge run` running and publishing there on topic(s)"
                     " det.? (still waiting)")
    assert [notice.due(now=t) for t in (103.1, 110.0, 112.9)] == [None, None, None]    # no spamming
    assert "in 13 s" in notice.due(now=113.0)
    assert "in 60 s" in notice.due(now=160.0) and notice.due(now=162.0) is None       # one notice after a stall
    notice.heard(now=170.0)
    assert notice.due(now=172.0) is None
    later = notice.due(now=173.0, invalid=2)
    assert later.startswith("nothing valid received from tcp://127.0.0.1:5555 for 3 s since the last message"
                            " (skipped 2 invalid message(s); edge serves tcp only with CURVE")
    assert SilenceNotice("tcp://127.0.0.1:5555", after_s=0, now=0.0).due(now=1e6) is None    # 0: off


def test_silence_notice_says_whether_the_ipc_socket_file_exists(tmp_path, ctx: zmq.Context) -> None:
    from edge.wire.client import SilenceNotice

    def text(endpoint: str) -> str:
        return SilenceNotice(endpoint, after_s=1, now=0.0).due(now=1.0)

    assert f"(no socket file {tmp_path}/none.sock)" in text(f"ipc://{tmp_path}/none.sock")
    (tmp_path / "plain").write_text("")
    assert f"({tmp_path}/plain exists but is not a socket)" in text(f"ipc://{tmp_path}/plain")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/bound.sock")
    assert f"(socket file {tmp_path}/bound.sock exists)" in text(f"ipc://{tmp_path}/bound.sock")
    pub.close(linger=0)


def test_recv_keeps_waiting_after_an_invalid_message_until_a_valid_one(pair) -> None:
    """An invalid message that arrives first must not end recv() before its timeout."""
    import concurrent.futures

    from tests.conftest import wait_for

    pub, sub = pair
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(sub.recv, 30)
        pub.send_multipart([b"det.t.c", b"\xc1"])                      # not msgpack
        wait_for(lambda: sub.invalid == 1, what="the invalid message to be read")
        send(pub, 9)
        message = pending.result(timeout=30)
    assert message is not None and message.seq == 9
