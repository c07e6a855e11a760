"""Subscriber helper for vehicle software: decode schema v1, detect seq gaps, latest-only mode.

    with Subscriber("ipc:///run/edge/results.sock", topics=["det."]) as sub:
        msg = sub.recv(timeout=1.0)      # Message or None
        print(msg.topic, msg.payload["detections"], sub.missed)

Incoming data is untrusted: payloads over `max_bytes` are skipped, msgpack is unpacked with
limits and no ext types, and the schema is checked. Invalid messages are skipped and counted
(`invalid`, `last_error`), never raised. The transport bounds memory too (MAXMSGSIZE,
TRANSPORT_LIMIT): libzmq drops a connection whose peer sends more, and does not reconnect it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import zmq

from edge import protocol
from edge.errors import ProtocolError
from edge.log import get_logger

log = get_logger("client")
TRANSPORT_LIMIT = 64 << 20


@dataclasses.dataclass(frozen=True)
class Message:
    topic: str
    payload: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.payload["seq"])


class Subscriber:
    def __init__(self, endpoint: str | None = None, topics: Iterable[str] = ("",), *,
                 latest_only: bool = False, max_bytes: int = protocol.MAX_MESSAGE_BYTES,
                 context: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint or protocol.default_results_endpoint()
        self.latest_only = latest_only
        self.max_bytes = max_bytes
        self.missed = 0              # messages lost upstream, from seq gaps
        self.invalid = 0
        self.last_error = ""
        self._last_seq: dict[str, int] = {}
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(TRANSPORT_LIMIT, max_bytes))
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(self.endpoint)

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message (latest-only: the newest one waiting), or None after `timeout` s."""
        if not self._socket.poll(None if timeout is None else int(timeout * 1000)):
            return None
        newest = None
        while True:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return newest
            message = self._decode(frames)
            if message is not None:
                if not self.latest_only:
                    return message
                newest = message

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _decode(self, frames: list[bytes]) -> Message | None:
        try:
            if len(frames) != 2:
                raise ProtocolError(f"expected 2 frames [topic, payload], got {len(frames)}")
            topic = frames[0].decode("utf-8")
            payload = protocol.validate(topic, protocol.unpack(frames[1], max_bytes=self.max_bytes))
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.invalid += 1
            self.last_error = str(exc)
            log.debug("skipped invalid message: %s", exc)
            return None
        self._track(topic, payload["seq"])
        return Message(topic, payload)

    def _track(self, topic: str, seq: int) -> None:
        last = self._last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
        self._last_seq[topic] = seq
