"""CURVE on a tcp results socket, on real sockets with real keys (`edge curve-keys`): a subscriber whose key
is allowed receives; one with an unknown key, or none, receives nothing and is counted as refused; the
daemon keeps publishing. A tcp endpoint without CURVE, and unusable keys, are refused at start."""
from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import zmq

from edge.config.loader import parse_config
from edge.config.wire import NAME_BYTES
from edge.errors import ConfigError, EdgeError
from edge.wire import protocol
from edge.wire.client import CurveKeys, Subscriber
from edge.wire.peers import Curve
from edge.wire.publisher import Publisher
from tests.conftest import PEER_S, free_port, wait_for
from tests.support.daemon import ROOT, edge_cmd, env, run
from tests.support.wire import LONGEST_PREFIX


def keys(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    result = run("curve-keys", str(directory), name)
    assert result.returncode == 0, result.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    server_public, server_secret = keys(tmp_path / "server", "edge")
    client_public, client_secret = keys(tmp_path / "clients-own", "vehicle")
    stranger_public, stranger_secret = keys(tmp_path / "strangers", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "vehicle.key").write_bytes(client_public.read_bytes())
    return {"server_public": server_public, "server_secret": server_secret, "allowed": allowed,
            "client_secret": client_secret, "stranger_secret": stranger_secret,
            "stranger_public": stranger_public}


@pytest.fixture
def publisher(pki: dict[str, Path], ctx: zmq.Context, tcp_endpoint: str) -> Iterator[Publisher]:
    pub = Publisher(tcp_endpoint, context=ctx, curve=Curve.load(pki["server_secret"], pki["allowed"]))
    pub.start()
    yield pub
    pub.stop(5)


def beat(seq: int) -> dict:
    return protocol.event_message("camera.lost", camera="c", reason=str(seq))


def test_only_allowed_keys_receive(pki: dict[str, Path], publisher: Publisher, ctx: zmq.Context) -> None:
    good = Subscriber(publisher.endpoint, topics=["sys."], context=ctx,
                      curve=CurveKeys.load(pki["client_secret"], pki["server_public"]))
    stranger = Subscriber(publisher.endpoint, topics=["sys."], context=ctx,
                          curve=CurveKeys.load(pki["stranger_secret"], pki["server_public"]))
    plain = Subscriber(publisher.endpoint, topics=["sys."], context=ctx)
    try:
        wait_for(lambda: publisher.refused_connections >= 1, PEER_S, "the stranger's key to be refused")
        wait_for(lambda: publisher.subscriptions == 1, PEER_S, "the allowed subscriber's subscription")
        for seq in range(20):
            publisher.publish("sys.event", beat(seq))
        got = [good.recv(timeout=10) for _ in range(20)]
        assert [m.payload["reason"] for m in got] == [str(seq) for seq in range(20)]
        assert stranger.recv(timeout=0) is None and plain.recv(timeout=0) is None
        assert publisher.connections == 1
    finally:
        for sub in (good, stranger, plain):
            sub.close()


def test_results_on_ipv6_loopback_reach_an_allowed_subscriber(pki: dict[str, Path], ctx: zmq.Context) -> None:
    """The config takes tcp://[::1]:PORT, but libzmq binds and connects IPv4 only unless ZMQ_IPV6 is set
    (zmq_setsockopt(3)): the bind failed with "No such device". Its peers are sourced by address (peers.py)."""
    endpoint = f"tcp://[::1]:{free_port()}"
    pub = Publisher(endpoint, context=ctx, curve=Curve.load(pki["server_secret"], pki["allowed"]))
    pub.start()
    sub = Subscriber(endpoint, topics=["sys."], context=ctx,
                     curve=CurveKeys.load(pki["client_secret"], pki["server_public"]))
    try:
        wait_for(lambda: pub.subscriptions == 1, PEER_S, "the subscription over IPv6")
        pub.publish("sys.event", beat(0))
        message = sub.recv(timeout=10)
        assert message is not None and message.payload["reason"] == "0"
    finally:
        sub.close()
        pub.stop(5)


def test_a_curve_subscriber_to_the_longest_topic_receives(pki: dict[str, Path], publisher: Publisher,
                                                         ctx: zmq.Context) -> None:
    """CURVE carries the SUBSCRIBE command inside its MESSAGE command (ZeroMQ RFC 26): it fits CURVE_MAXMSGSIZE."""
    sub = Subscriber(publisher.endpoint, topics=[LONGEST_PREFIX.decode()], context=ctx,
                     curve=CurveKeys.load(pki["client_secret"], pki["server_public"]))
    try:
        wait_for(lambda: publisher.subscriptions == 1, PEER_S, "the subscription to the longest topic")
        publisher.publish(LONGEST_PREFIX.decode(), protocol.det_message(
            task="t" * NAME_BYTES, camera="c" * NAME_BYTES, frame=0, t_capture_ns=1,
            precision="fp32", engine="e", size=(8, 8), detections=[]))
        message = sub.recv(timeout=10)
        assert message is not None and message.topic == LONGEST_PREFIX.decode()
    finally:
        sub.close()


@pytest.mark.parametrize(("set_up", "logged"), [
    ("no CURVE", "refused a connection: a peer without CURVE on this CURVE endpoint"),
    ("a key not listed", "refused a connection: client key "),
    ("another server key", "refused a connection: a CURVE handshake this daemon cannot decrypt"),
])
def test_a_subscriber_with_the_wrong_curve_set_up_is_logged(pki: dict[str, Path], ctx: zmq.Context,
                                                            tcp_endpoint: str, caplog: pytest.LogCaptureFixture,
                                                            set_up: str, logged: str) -> None:
    """libzmq 4.3.5 asks ZAP about a CURVE client only once its HELLO and INITIATE opened: a plaintext (NULL)
    peer ends at the greeting (src/zmtp_engine.cpp: ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH), one with
    another server key at HELLO (src/curve_server.cpp: ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC), both seen only
    as the monitor's EVENT_HANDSHAKE_FAILED_PROTOCOL. Each is logged as a refused connection, in the
    rate-limited summary line."""
    curve = {"no CURVE": None,
             "a key not listed": CurveKeys.load(pki["stranger_secret"], pki["server_public"]),
             "another server key": CurveKeys.load(pki["client_secret"], pki["stranger_public"])}[set_up]
    with caplog.at_level(logging.INFO, logger="edge.publisher"):
        pub = Publisher(tcp_endpoint, context=ctx, curve=Curve.load(pki["server_secret"], pki["allowed"]))
        pub.start()
        sub = Subscriber(tcp_endpoint, topics=["sys."], context=ctx, curve=curve)
        try:
            wait_for(lambda: pub.refused_connections >= 1, PEER_S, "the subscriber to be refused")
            wait_for(lambda: pub.connections == 0, PEER_S, "its connection to be closed")
        finally:
            sub.close()
            pub.stop(5)                                      # logs the summary line now, if not yet
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines and logged in lines[-1]


def test_a_secret_key_among_the_clients_is_warned_of(pki: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """pyzmq's load_certificates reads *.key only: a client's NAME.key_secret there lets no one in."""
    (pki["allowed"] / "vehicle2.key_secret").write_bytes(pki["stranger_secret"].read_bytes())
    with caplog.at_level(logging.WARNING, logger="edge.publisher"):
        curve = Curve.load(pki["server_secret"], pki["allowed"])
    assert len(curve.clients) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{pki['allowed']} holds secret key file(s) vehicle2.key_secret: only public NAME.key files there let"
        " subscribers in, and a secret key belongs to its owner alone; move each out, and put its owner's public"
        " NAME.key there instead"]


@pytest.mark.parametrize("with_keys", [False, True], ids=["no --curve", "a key not listed"])
def test_edge_subscribe_names_curve_when_nothing_arrives_on_tcp(pki: dict[str, Path], publisher: Publisher,
                                                                with_keys: bool) -> None:
    keys = ["--curve", str(pki["stranger_secret"]), str(pki["server_public"])] if with_keys else []
    proc = subprocess.Popen(edge_cmd("subscribe", "--endpoint", publisher.endpoint, "--notice-after", "0.3", *keys),
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    try:
        notice = wait_for(lambda: next((line for line in lines if "nothing received" in line), None), 60, "the notice")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == 0
    expected = ("with CURVE, nothing arrives while the daemon's output.curve.clients lacks this client's public key"
                " or SERVER.key is not the daemon's public key; the daemon logs the connections it refused"
                if with_keys else "edge serves tcp only with CURVE: pass --curve CLIENT.key_secret SERVER.key")
    assert f" ({expected}); is `edge run` running" in notice


def read_lines(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def test_tcp_without_curve_is_refused_and_curve_over_the_network_is_allowed(tmp_path: Path,
                                                                            pki: dict[str, Path]) -> None:
    text = ("version: 1\ncameras: [{{id: c, uri: 'test://bars'}}]\n"
            "tasks: [{{name: t, type: detector, model: m.onnx, cameras: [c]}}]\noutput:\n  results: {endpoint}\n")
    with pytest.raises(ConfigError, match="without CURVE would reach any process on this machine"):
        parse_config(text.format(endpoint="tcp://127.0.0.1:5555"), source="t", base_dir=tmp_path, environ={})
    with pytest.raises(ConfigError, match="without CURVE would reach anyone on the network"):
        parse_config(text.format(endpoint="tcp://10.1.2.3:5555"), source="t", base_dir=tmp_path, environ={})
    config = parse_config(text.format(endpoint="tcp://10.1.2.3:5555") + f"  curve:\n    secret_key: "
                          f"{pki['server_secret']}\n    clients: {pki['allowed']}\n", source="t",
                          base_dir=tmp_path, environ={})
    assert config.output.curve is not None and config.output.curve.clients == str(pki["allowed"])


def test_unusable_keys_fail_closed(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(EdgeError, match="holds no secret key"):
        Curve.load(pki["server_public"], pki["allowed"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeError, match="no client certificates"):
        Curve.load(pki["server_secret"], tmp_path / "empty")
    with pytest.raises(EdgeError, match="cannot read the CURVE keys"):
        Curve.load(tmp_path / "missing.key_secret", pki["allowed"])


def test_curve_keys_never_overwrites_a_pair(tmp_path: Path) -> None:
    public, secret = keys(tmp_path, "edge")
    assert secret.stat().st_mode & 0o777 == 0o600
    again = run("curve-keys", str(tmp_path), "edge")
    assert again.returncode == 1 and "keys are never overwritten" in again.stderr
    assert public.exists()
