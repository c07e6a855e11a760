"""Schema v1 and safe unpacking of untrusted msgpack."""
from __future__ import annotations

import msgpack
import pytest

from edge.config.wire import default_results_endpoint
from edge.errors import ProtocolError
from edge.wire import protocol
from tests.support.wire import det


def test_roundtrip_and_validate() -> None:
    payload = det()
    assert protocol.validate("det.t.c", protocol.unpack(protocol.pack(payload))) == payload


@pytest.mark.parametrize("buf,message", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({1: "int key"}), "not valid msgpack"),
    (msgpack.packb(msgpack.ExtType(5, b"x")), "ext type 5"),
    (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),                  # array32 header claiming 4G items
    (b"\x92\x01", "not valid msgpack"),                              # truncated array
    # msgpack-python turns ext type -1 into a Timestamp before ext_hook sees it (timestamp=0): 32, 64, 96 bits
    (msgpack.packb(msgpack.Timestamp(1, 0)), "ext type -1 \\(a timestamp\\) is not allowed"),
    (msgpack.packb([[0, msgpack.Timestamp(1, 5)]]), "ext type -1 \\(a timestamp\\)"),
    (msgpack.packb({"t": {"u": msgpack.Timestamp(2**40, 0)}}), "ext type -1 \\(a timestamp\\)"),
    # msgpack-python keeps the last of repeated keys; another decoder may keep the first
    (b"\x82\xa1a\x01\xa1a\x02", "a map with the key 'a' more than once"),
    (b"\x91\x82\xc4\x01k\x01\xc4\x01k\x02", "a map with the key b'k' more than once"),
])
def test_unpack_rejects_hostile_input(buf: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.unpack(buf)


def test_unpack_keeps_keys_that_differ_in_type_and_maps_in_arrays() -> None:
    buf = msgpack.packb([{"a": 1, b"a": 2}, {"a": [3]}], use_bin_type=True)    # str 'a' and bin b'a' differ
    assert protocol.unpack(buf) == [{"a": 1, b"a": 2}, {"a": [3]}]


def test_unpack_size_limit() -> None:
    with pytest.raises(ProtocolError, match="exceeds the 100-byte limit"):
        protocol.unpack(msgpack.packb("x" * 200), max_bytes=100)


@pytest.mark.parametrize("payload,message", [
    ([1, 2], "not a map"),
    (det(v=2), "schema version 2"),
    ({k: v for k, v in det().items() if k != "seq"}, "field 'seq'"),
    (det(seq=True), "field 'seq'"),
    (det(kind="weird"), "unknown kind"),
    (det(size=[0, 10]), "is not \\[width, height\\]"),
    (det(detections=[[1, 2, 3]]), "is not \\[x1, y1, x2, y2, score, class_id\\]"),
    (det(detections=[["a", 2, 3, 4, 5, 6]]), "is not \\[x1"),
])
def test_validate_rejects(payload: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.validate("det.t.c", payload)


def test_heartbeat_needs_only_common_fields() -> None:
    beat = {"v": 1, "kind": "heartbeat", "seq": 3, "t_publish_ns": 1, "t_wall_ns": 2, "lanes": []}
    assert protocol.validate("sys.heartbeat", beat) is beat


def test_default_endpoint_falls_back_when_run_dir_is_not_writable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_results_endpoint() == f"ipc://{tmp_path}/edge/results.sock"
    monkeypatch.setattr("edge.config.wire.RUN_DIR", tmp_path)
    assert default_results_endpoint() == f"ipc://{tmp_path}/results.sock"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_socket_directory_others_can_write_is_refused_by_daemon_and_subscriber(tmp_path, mode: int) -> None:
    import zmq

    from edge.errors import EdgeError
    from edge.wire.client import Subscriber
    from edge.wire.publisher import Publisher

    spoofed = tmp_path / "edge-1000"
    spoofed.mkdir()
    spoofed.chmod(mode)
    ctx = zmq.Context()
    try:
        with pytest.raises(EdgeError, match=f"socket directory {spoofed} is writable by group or others"):
            Publisher(f"ipc://{spoofed}/results.sock", context=ctx).start()
        with pytest.raises(EdgeError, match=f"mode {mode:o}"):
            Subscriber(f"ipc://{spoofed}/results.sock", context=ctx)
        assert not (spoofed / "results.sock").exists()
    finally:
        ctx.destroy(linger=0)


def test_a_default_socket_directory_owned_by_another_user_is_refused(tmp_path, monkeypatch) -> None:
    import os

    from edge.errors import EdgeError
    from edge.wire.client import Subscriber
    from edge.wire.publisher import Publisher

    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    theirs = tmp_path / "edge"
    theirs.mkdir(mode=0o755)
    other = os.geteuid() + 1
    os.chown(theirs, other, other)                         # another user's, as a spoofer would leave it
    with pytest.raises(EdgeError, match=f"belongs to uid {other}, not to this user"):
        Subscriber()
    with pytest.raises(EdgeError, match=f"belongs to uid {other}, not to this user"):
        Publisher(default_results_endpoint()).start()


SENT = {"seq": 0, "t_publish_ns": 2, "t_wall_ns": 3}       # what the publisher adds


def test_the_constructors_build_valid_messages() -> None:
    det_msg = protocol.det_message(task="t", camera="c", frame=4, t_capture_ns=1, precision="int8", engine="e",
                                   size=(768, 576), detections=[(1.04, 2.0, 3.0, 4.0, 0.912345, 1.0),
                                                                (0, 0, 1, 1, 0.5, 7)], labels=["a", "b"])
    assert det_msg["detections"] == [[1.0, 2.0, 3.0, 4.0, 0.9123, 1], [0.0, 0.0, 1.0, 1.0, 0.5, 7]]
    assert det_msg["labels"] == ["b", "7"]                        # a class id the labels do not cover
    beat = protocol.heartbeat_message(version="0", uptime_s=1.23456, lanes=[], cameras=[],
                                      peers={"connections": 1}, supervisor=None)
    event = protocol.event_message("precision.switch", task="t", reason="tj 90 °C ≥ hot 85 °C")
    telemetry = protocol.telemetry_message(source="sysfs", temps_c={"tj": 61.237}, power_mw={"VDD_IN": 5123.44},
                                           total_mw=5123.44, mode=None, gpu_load=0.12345, problems=("cv0: EAGAIN",))
    for topic, message in (("det.t.c", det_msg), ("sys.heartbeat", beat), ("sys.event", event),
                           ("sys.telemetry", telemetry)):
        assert protocol.validate(topic, protocol.unpack(protocol.pack({**message, **SENT})))
    assert beat["uptime_s"] == 1.235 and beat["connections"] == 1
    assert telemetry["temps_c"] == {"tj": 61.24} and telemetry["gpu_load"] == 0.123


def test_an_unknown_event_is_a_bug_caught_where_it_is_built() -> None:
    with pytest.raises(ValueError, match="unknown event 'camera.exploded'"):
        protocol.event_message("camera.exploded")
