"""The camera URI language (edge/config/cameras.py): schemes, typed parameters, errors, credentials never shown."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.cameras import parse_uri


@pytest.mark.parametrize("uri,scheme,location,params", [
    ("file:///v/a.avi?realtime=0&loop=1", "file", "/v/a.avi", {"realtime": False, "loop": True}),
    ("test://bars?fps=15&size=320x240&frames=5", "test", "bars", {"fps": 15.0, "size": "320x240", "frames": 5}),
    ("v4l2:///dev/video0?size=640x480", "v4l2", "/dev/video0", {"size": "640x480"}),
    ("csi://0?flip=2", "csi", "0", {"flip": 2}),
    ("rtsp://u:p@cam.local:554/s?x=1", "rtsp", "rtsp://u:p@cam.local:554/s?x=1", {}),
    ("rtsp://cam/live?transport=udp&timeout=0.5", "rtsp", "rtsp://cam/live", {"transport": "udp", "timeout": 0.5}),
    ("rtsp://u:p?w@cam/s?channel=1&transport=tcp&profile=2", "rtsp", "rtsp://u:p?w@cam/s?channel=1&profile=2",
     {"transport": "tcp"}),                 # edge's parameters out, the camera's kept; a `?` in the password stays
])
def test_parse_uri(uri: str, scheme: str, location: str, params: dict[str, Any]) -> None:
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.location, parsed.params) == (scheme, location, params)


@pytest.mark.parametrize("uri,message", [
    ("video.avi", "has no scheme"), ("http://x/y", "unknown camera URI scheme"),
    ("test://bars?size=big", "WIDTHxHEIGHT"), ("test://stripes", "unknown test pattern"),
    ("csi://front", "sensor number"), ("rtsp:///nohost", "no host"), ("file://", "names no file"),
    ("test://bars?frames=-1", "must not be negative"), ("test://bars?fps=-1", "0.01 to 1000"),
])
def test_parse_uri_errors(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_uri(uri)


@pytest.mark.parametrize("uri,message", [
    ("rtsp://u:s3cret@cam/live?transport=quic", "parameter 'transport' must be tcp or udp, got 'quic' (tcp, the"
     " default, suits a vehicle network; udp only where latency matters and the network is clean)"),
    ("rtsp://cam/live?transport=", "parameter 'transport' must be tcp or udp, got ''"),
    ("rtsp://cam/live?timeout=0.05", "parameter 'timeout' must be 0.1 to 60 seconds, got '0.05' (the longest wait for"
     " a frame before the camera counts as stalled; keep it above a few frame intervals: timeout=2 suits 1.5 fps"
     " and up)"),
    ("rtsp://cam/live?timeout=61", "must be 0.1 to 60 seconds, got '61'"),
    ("rtsp://cam/live?timeout=nan", "parameter 'timeout' must be a finite number of seconds, got 'nan' (e.g."
     " timeout=2)"),
    ("rtsp://cam/live?timeout=2s", "parameter 'timeout' must be a number of seconds, got '2s' (e.g. timeout=2)"),
    ("rtsp://cam/live?timeout=2000ms", "must be a number of seconds, got '2000ms' (e.g. timeout=2)"),
    ("rtsp://u:s3cret@cam/live?timeout=1e309", "must be a finite number of seconds, got '1e309'"),
    ("rtsp://u:s3cret@cam/live?Transport=udp", "rtsp URI 'rtsp://u:***@cam/live?Transport=udp' has the parameter"
     " 'Transport', which edge would pass to the camera unread: edge's parameters are lower case; write 'transport'"),
    ("rtsp://cam/live?channel=1&TIMEOUT=5", "has the parameter 'TIMEOUT', which edge would pass"),
    ("rtsp://cam/live?timeout=1&timeout=2", "rtsp URI 'rtsp://cam/live?timeout=1&timeout=2' gives the parameter"
     " 'timeout' twice; keep one"),
    ("rtsp://u:s3cret@cam/live?transport=quic&user=a@b", "rtsp URI 'rtsp://u:***@b' has an '@' after its parameter"
     " 'transport'"),
    ("rtsp://cam/live?timeout=9&x=a@b", "has an '@' after its parameter 'timeout': edge reads the user and password up"
     " to the last '@', so the parameter would reach the camera unread; write an '@' in the query as %40"),
])
def test_bad_rtsp_transport_or_timeout_is_a_config_error(uri: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_uri(uri)
    assert message in str(caught.value) and "s3cret" not in str(caught.value)


@pytest.mark.parametrize("uri,message", [
    ("csi://0?fps=inf", "parameter 'fps' must be a finite number, got 'inf'"),
    ("csi://0?fps=nan", "parameter 'fps' must be a finite number, got 'nan'"),
    ("csi://0?fps=1e309", "parameter 'fps' must be a finite number, got '1e309'"),      # float() makes it inf
    ("test://bars?fps=-inf", "must be a finite number, got '-inf'"),
    ("csi://0?fps=0", "parameter 'fps' must be 0.01 to 1000 frames a second, got '0' (a fraction is fine: fps=29.97)"),
    ("v4l2:///dev/video0?fps=0.001", "must be 0.01 to 1000 frames a second, got '0.001'"),
    ("test://bars?fps=1000.5", "must be 0.01 to 1000 frames a second, got '1000.5'"),
    ("csi://0?flip=8", "parameter 'flip' must be nvvidconv's flip-method 0..7, got '8' (0 none, 1 counterclockwise"
                       " 90, 2 rotate 180, 3 clockwise 90, 4 horizontal flip, 5 upper-right diagonal, 6 vertical flip,"
                       " 7 upper-left diagonal)"),
    ("csi://0?flip=99999999999999", "flip-method 0..7, got '99999999999999'"),
    ("csi://0?flip=-1", "flip-method 0..7, got '-1'"),
    ("csi://\u00b2", "must name a sensor number 0..255 (nvarguscamerasrc's sensor-id), e.g. csi://0"),
    ("csi://\u0663", "must name a sensor number 0..255"),                           # an Arabic-Indic three
    ("csi://256", "must name a sensor number 0..255"),
    ("csi://99999999999999999999", "must name a sensor number 0..255"),
    ("csi://0 ! filesink", "must name a sensor number 0..255"),
])
def test_numbers_a_camera_cannot_take_are_refused_with_the_rule(uri: str, message: str) -> None:
    """float() takes inf, nan and 1e309 and str.isdigit() Unicode digits: such values passed the config and then
    failed deep in the reader (a raw OverflowError out of Camera.open), or reached GStreamer as framerate=0/1."""
    with pytest.raises(ValueError) as caught:
        parse_uri(uri.encode().decode("unicode_escape"))
    assert message in str(caught.value)


@pytest.mark.parametrize("uri,params,location", [
    ("csi://007?fps=29.97&flip=7", {"fps": 29.97, "flip": 7}, "7"), ("csi://255?fps=0.01", {"fps": 0.01}, "255"),
    ("test://bars?fps=1000", {"fps": 1000.0}, "bars"),
])
def test_numbers_at_the_edges_of_their_ranges_are_taken(uri: str, params: dict[str, Any], location: str) -> None:
    parsed = parse_uri(uri)
    assert (parsed.params, parsed.location) == (params, location)


def test_relative_file_uri_resolves_against_base(tmp_path: Path) -> None:
    assert parse_uri("file://clips/a.avi", base_dir=tmp_path).location == f"{tmp_path}/clips/a.avi"


def test_rtsp_password_is_redacted() -> None:
    assert parse_uri("rtsp://admin:hunter2@10.0.0.5:554/live").redacted() == "rtsp://admin:***@10.0.0.5:554/live"


@pytest.mark.parametrize("uri", ["rtsp://user:s3cret@host:99999/x", "rtsp://user:s3cret@host:0/x",
                                 "rtsp://user:s3cret@/x", "rtsp://user:s3/cr:et@@/x"])
def test_bad_rtsp_uris_are_refused_without_their_password(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_uri(uri)
    assert "s3" not in str(info.value) and ":***@" in str(info.value)
    assert "port outside 1..65535" in str(info.value) or "has no host" in str(info.value)


@pytest.mark.parametrize("uri, shown", [("rtsp://u:p@ss/w:rd@cam.local:554/live", "rtsp://u:***@cam.local:554/live"),
                                        ("rtsp://admin:secret@10.0.0.2/stream", "rtsp://admin:***@10.0.0.2/stream"),
                                        ("rtsp://viewer@cam.local/stream", "rtsp://viewer@cam.local/stream"),
                                        ("rtsp://cam.local/stream", "rtsp://cam.local/stream")])
def test_redacted_never_shows_credentials(uri: str, shown: str) -> None:
    assert parse_uri(uri).redacted() == shown


def test_a_uri_without_a_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="has no scheme") as info:
        parse_uri("admin:s3cret@cam.local/x")
    assert "s3cret" not in str(info.value) and "'admin:***@cam.local/x'" in str(info.value)



@pytest.mark.parametrize("uri", ["file://admin:hunter22@/v/a.avi?loop=2", "test://admin:hunter22@stripes",
                                 "v4l2://admin:hunter22@/dev/video0?size=big", "rtsp://admin:hunter22@cam:0/x",
                                 "csi://admin:hunter22@front", "admin:hunter22@cam://x"])
@pytest.mark.parametrize("password", ["hunter22", "hun?ter22"])
def test_no_rule_quotes_a_password(uri: str, password: str) -> None:
    """The rule of a csi or test URI, or of an unknown scheme, quoted it; a `?` in the password made its tail a
    parameter that a rule quoted."""
    with pytest.raises(ValueError) as caught:
        parse_uri(uri.replace("hunter22", password))
    assert "ter22" not in str(caught.value)


@pytest.mark.parametrize("uri", ["file:///v/a\x07.avi", "file:///v/a\tb.avi", "test://bars\x1b", "v4l2:///dev/video0\x85",
                                 "rtsp://cam/live\r", "csi://0\x7f", "file:///v/a\ud800.avi", "rtsp://u:p\x07w@cam/x"])
def test_a_uri_the_system_cannot_take_as_written_is_refused(uri: str) -> None:
    """A YAML escape puts a control character or a lone surrogate where the reader checks only the raw text: a file
    path with a BEL, a surrogate that no system call can encode (UnicodeEncodeError at start)."""
    with pytest.raises(ValueError, match="contains the control character|a lone surrogate") as caught:
        parse_uri(uri)
    assert "p\\x07w" not in str(caught.value)
