"""The connection gate and the subscription records of edge/wire/peers.py, driven directly: exact counts per
source, the token bucket on a fake clock, the refusal texts and what (un)subscriptions return. The tests on
real connections are in test_peers.py."""
from __future__ import annotations

import os
import socket
import types
from collections.abc import Callable, Iterator

import pytest
import zmq

from edge.wire import peers
from edge.wire.peers import Activity, Gate, Limits, Subscriptions

UID = f"uid {os.getuid()}"


class Notes(Activity):
    """An Activity that keeps each note's example text."""

    def __init__(self) -> None:
        super().__init__()
        self.examples: list[str] = []

    def note(self, what: str, example: str = "") -> None:
        super().note(what, example)
        self.examples.append(example)


MakeGate = Callable[..., Gate]


@pytest.fixture
def make_gate(ctx: zmq.Context) -> Iterator[MakeGate]:
    """A Gate (thread not started) on an XPUB's real monitor socket, built as the publisher builds it; every
    connection counts as the listener's, so a refused one is shut down."""
    made: list[tuple[Gate, zmq.Socket]] = []

    def make(**limits: float) -> Gate:
        xpub = ctx.socket(zmq.XPUB)
        monitor = xpub.get_monitor_socket(peers.MONITOR_EVENTS)
        gate = Gate(ctx, monitor, Limits(**limits), lambda _: True, Notes())
        made.append((gate, xpub))
        return gate

    yield make
    for gate, xpub in made:
        gate.stop(1)
        xpub.close(linger=0)


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[int, socket.socket]]]:
    """Unix socket pairs: the fd the gate is given (its source is this uid) and the peer's end."""
    opened: list[socket.socket] = []

    def pair() -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX)
        opened.extend((ours, theirs))
        return ours.fileno(), theirs

    yield pair
    for sock in opened:
        sock.close()


def shut_down(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        return peer.recv(1) == b""
    except BlockingIOError:
        return False


def test_connections_are_counted_per_source_and_the_count_empties(make_gate: MakeGate, pairs) -> None:
    gate = make_gate(peers=10, peers_per_source=2)
    (a, _), (b, _), (c, peer_c) = pairs(), pairs(), pairs()
    gate._accepted(a)
    gate._accepted(b)
    assert (gate.connected, dict(gate._sources)) == (2, {UID: 2})
    assert gate._over(UID) == f"{UID} holds 2 connections (limit 2)"
    gate._accepted(c)
    assert (gate.connected, gate.refused, shut_down(peer_c)) == (2, 1, True)
    assert gate._activity.examples == [f"refused a connection: {UID} holds 2 connections (limit 2)"]
    gate._closed(a)
    assert (gate.connected, dict(gate._sources), gate._over(UID)) == (1, {UID: 1}, "")
    gate._closed(a)                             # closed already: nothing to count
    gate._closed(b)
    assert (gate.connected, dict(gate._sources)) == (0, {})


def test_a_reused_fd_number_replaces_its_old_connection(make_gate: MakeGate, pairs) -> None:
    gate = make_gate()
    fd, _ = pairs()
    gate._accepted(fd)
    gate._accepted(fd)                          # its DISCONNECTED not read yet
    assert (gate.connected, dict(gate._sources)) == (1, {UID: 1})
    gate._closed(fd)
    assert (gate.connected, dict(gate._sources)) == (0, {})


def test_connections_are_refused_from_exactly_the_limit(make_gate: MakeGate, pairs) -> None:
    gate = make_gate(peers=2, peers_per_source=5)
    (a, _), (b, _), (c, peer_c) = pairs(), pairs(), pairs()
    gate._accepted(a)
    assert gate._over(UID) == ""
    gate._accepted(b)
    assert gate._over(UID) == "2 connections open (limit 2)"
    gate._accepted(c)
    assert (gate.connected, gate.refused, shut_down(peer_c)) == (2, 1, True)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The gate's monotonic clock, set by the test (`clock.now`)."""
    fake = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(peers, "time", types.SimpleNamespace(monotonic=lambda: fake.now))
    return fake


def test_the_bucket_admits_a_burst_then_the_rate(make_gate: MakeGate, clock: types.SimpleNamespace) -> None:
    gate = make_gate(admit_burst=2, admit_per_s=4)
    refused = f"{UID} connects faster than 4/s"
    assert [gate._rate(UID) for _ in range(3)] == ["", "", refused]
    assert gate._rate(UID) == refused           # a refusal takes no token and keeps the bucket
    clock.now += 0.125                          # half a token
    assert gate._rate(UID) == refused
    clock.now += 0.125                          # a whole token, counted from the last refusal's time too
    assert [gate._rate(UID), gate._rate(UID)] == ["", refused]
    clock.now += 100                            # refilled up to the burst, no more
    assert [gate._rate(UID) for _ in range(3)] == ["", "", refused]
    assert gate._rate("127.0.0.1") == ""        # another source has a bucket of its own


def test_the_buckets_are_forgotten_above_four_per_peer(make_gate: MakeGate, clock: types.SimpleNamespace) -> None:
    gate = make_gate(peers=2, admit_burst=1, admit_per_s=0.001)
    assert [gate._rate("s0"), gate._rate("s0")] == ["", "s0 connects faster than 0.001/s"]
    for n in range(1, 9):
        assert gate._rate(f"s{n}") == ""
    assert len(gate._buckets) == 9              # 4 * peers + 1
    assert gate._rate("s0") == "s0 connects faster than 0.001/s"
    assert list(gate._buckets) == ["s0"]        # the others forgotten; s0 kept its empty bucket
    assert gate._rate("s1") == ""


@pytest.fixture
def subs(make_gate: MakeGate) -> Subscriptions:
    gate = make_gate(subscriptions_per_peer=1)
    return Subscriptions(gate.limits, gate, lambda _: True, gate._activity)


def rejected(subs: Subscriptions) -> list[str]:
    return subs._activity.examples


def test_a_connections_subscriptions_and_unsubscriptions(subs: Subscriptions, pairs) -> None:
    fd, _ = pairs()
    assert subs.inbound(1, fd, [b"\x00det."]) is None          # never subscribed
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")  # libzmq noted it once: counted once
    assert subs.subscriptions == 1
    assert subs.inbound(2, fd, [b"\x00det."]) is None          # another connection's
    assert subs.inbound(1, fd, [b"\x00det."]) == (False, b"det.")
    assert subs.inbound(1, fd, [b"\x00det."]) is None
    assert subs.inbound(1, fd, [b"\x01sys."]) == (True, b"sys.")
    assert (subs.subscriptions, subs.rejected, dict(subs._held)) == (1, 0, {b"sys.": 1})


def test_a_subscription_sent_again_after_its_refusal(subs: Subscriptions, pairs) -> None:
    fd, peer = pairs()
    prefix = b"x" * 50
    assert subs.inbound(1, fd, [b"\x01" + prefix]) is None
    assert subs.inbound(1, fd, [b"\x01" + prefix]) is None
    text = repr(prefix[:40])
    assert rejected(subs) == [f"rejected subscription {text}, not a prefix of an edge topic; closed its connection",
                              f"rejected subscription {text} once more after its refusal; closed its connection"]
    assert (subs.subscriptions, subs.rejected, dict(subs._refused), shut_down(peer)) == (0, 2, {prefix: 1}, True)


def test_a_subscription_over_the_limit_and_again(subs: Subscriptions, pairs) -> None:
    fd, _ = pairs()
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")
    assert subs.inbound(1, fd, [b"\x01sys."]) is None
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")  # held already: not a second one
    assert rejected(subs)[-1] == "rejected subscription number 2 on one connection (limit 1); closed its connection"


def test_a_message_that_is_not_a_subscription_is_rejected_with_its_frames_noted(subs: Subscriptions, pairs) -> None:
    fd, peer = pairs()
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")
    assert subs.inbound(1, fd, [b"\x00det.", b"\x01sys.", b"payload"]) is None
    assert rejected(subs)[-1] == "rejected a message that is not a subscription; closed its connection"
    assert (subs.subscriptions, dict(subs._held), dict(subs._refused)) == (0, {}, {b"sys.": 1})
    assert shut_down(peer)
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")  # forgotten for this connection
    assert subs.inbound(1, fd, [b"\x01sys."]) is None              # refused before
    assert rejected(subs)[-1].startswith("rejected subscription b'sys.' once more after its refusal")
    assert (subs.subscriptions, dict(subs._held)) == (1, {b"det.": 1})


def test_messages_without_a_connection_are_counted_but_never_refused_per_connection(subs: Subscriptions,
                                                                                     pairs) -> None:
    fd, peer = pairs()
    assert subs.inbound(None, None, [b"\x00det."]) is None     # nothing held or refused
    assert subs._forget(None, b"det.") is False
    assert subs.inbound(None, None, [b"\x01det."]) == (True, b"det.")
    assert subs.inbound(None, fd, [b"\x01sys."]) == (True, b"sys.")  # a connection needs both; no limit per one
    assert subs.inbound(7, None, [b"\x01det.people."]) == (True, b"det.people.")
    assert (subs.subscriptions, subs._peers) == (3, {})
    assert subs.inbound(None, None, [b"\x01nope"]) is None
    assert rejected(subs)[-1] == "rejected subscription b'nope', not a prefix of an edge topic"
    assert subs._forget(None, b"nope") is False                   # a refused one ends nothing applied
    assert subs.inbound(None, None, [b"\x00det."]) == (False, b"det.")
    assert (subs.subscriptions, subs.rejected, dict(subs._refused), shut_down(peer)) == (2, 1, {}, False)


def test_a_closed_connections_messages_are_counted_but_apply_nothing(subs: Subscriptions, pairs,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fd, peer = pairs()
    gate = subs._gate
    looked: list[int] = []
    monkeypatch.setattr(gate, "ended", lambda conn, fd: looked.append(conn) or Gate.ended(gate, conn, fd))
    assert subs.inbound(1, fd, [b"\x01det."]) == (True, b"det.")
    gate._ids, gate._ended[fd], gate.disconnects = 1, 1, 1        # as the gate reads its DISCONNECTED
    assert subs.inbound(1, fd, [b"\x01sys."]) is None              # judged (refused: over the limit), not applied
    assert (subs.subscriptions, subs.rejected, shut_down(peer)) == (1, 1, False)
    assert subs.inbound(1, fd, [b"\x00det."]) is None              # counted, not unapplied: the fd may be reused
    assert subs.subscriptions == 0
    looked.clear()
    subs.emptied()
    assert (list(subs._peers), looked) == ([], [])                # seen closed before: forgotten, nothing asked
    subs.inbound(2, fd, [b"\x01det."])
    subs.emptied()
    subs.emptied()                                                 # no DISCONNECTED since: no connection asked
    assert (list(subs._peers), looked) == ([2], [2])
