"""The service manager's end of NOTIFY_SOCKET, for tests of what the daemon tells systemd."""
from __future__ import annotations

import socket
from pathlib import Path


class Systemd:
    """The manager's end of NOTIFY_SOCKET: a bound datagram socket collecting what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 30) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.split("\n"))
        self.messages.append(message)
        return message

    def until(self, key: str, timeout: float = 30) -> dict[str, str]:
        """The next message with `key`, keeping every message on the way."""
        while True:
            message = self.next(timeout)
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()
