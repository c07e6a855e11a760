"""What the config shares with the wire (edge/config/wire.py): an endpoint is refused unless the system can take
it as written (a path that fits a unix socket and encodes, no control character, no user in a tcp address)."""
from __future__ import annotations

import pytest

from edge.config.wire import IPC_PATH_BYTES, check_endpoint


@pytest.mark.parametrize("endpoint", ["ipc:///run/edge/results.sock", "tcp://127.0.0.1:5555", "tcp://[::1]:5555",
                                      "ipc:///r/" + "a" * (IPC_PATH_BYTES - 3), "ipc:///r/a" + "é" * 51])
def test_endpoints_the_system_takes_are_accepted(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint,rule", [
    ("ipc:///r/" + "a" * (IPC_PATH_BYTES - 2), f"has {IPC_PATH_BYTES + 1} bytes (UTF-8); a unix socket path holds at"
                                               f" most {IPC_PATH_BYTES} on Linux"),
    ("ipc:///r/a" + "é" * 52, f"has {IPC_PATH_BYTES + 1} bytes"),                         # 2 bytes each in UTF-8
    ("ipc:///r/" + "a" * 256 + "/r.sock", "has 266 bytes"),                             # a part over NAME_MAX
    ("ipc:///run/edge/a\ud800.sock", "contains '\\ud800', a lone surrogate"),
    ("ipc:///run/edge/a\x07.sock", "contains the control character '\\x07' (U+0007)"),
    ("ipc:///run/edge/a\x9b.sock", "contains the control character '\\x9b' (U+009B)"),
    ("tcp://host\x1b:5555", "contains the control character '\\x1b'"),
    ("tcp://u:hunter22@127.0.0.1:5555", "tcp endpoint 'tcp://u:***@127.0.0.1:5555' names a user"),
])
def test_endpoints_that_fail_at_start_are_refused(endpoint: str, rule: str) -> None:
    """Each passed the check and failed where the daemon or a client used it: UnicodeEncodeError (a surrogate) in
    the Publisher, ControlServer and Subscriber, ZMQError or OSError (a path over sun_path), ZMQError "No such
    device" (a user in a tcp address); a control character made a socket file that no one can name."""
    with pytest.raises(ValueError) as caught:
        check_endpoint(endpoint)
    assert rule in str(caught.value) and "hunter22" not in str(caught.value)
