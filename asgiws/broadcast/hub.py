"""One worker's subscribers: channel -> connections, and delivery to them."""

from __future__ import annotations

import logging
from typing import Protocol

from asgiws.broadcast.prepared import PreparedMessage
from asgiws.websocket.extensions import Extension

__all__ = ["Hub", "Subscriber"]

logger = logging.getLogger("asgiws.error")


class Subscriber(Protocol):
    """What the hub needs from a connection (WebSocketProtocol provides it)."""

    on_connection_lost: object

    def deliver_prepared(self, message: PreparedMessage) -> bool: ...

    @property
    def negotiated_extensions(self) -> list[Extension]: ...


class Hub:
    """Local subscriptions of one worker. Not thread-safe: use it on the server's loop."""

    def __init__(self) -> None:
        self.channels: dict[str, set[Subscriber]] = {}
        # The reverse map, so that a lost connection leaves every channel at once.
        self._subscriptions: dict[Subscriber, set[str]] = {}

    def subscribe(self, connection: Subscriber, channel: str) -> None:
        self.channels.setdefault(channel, set()).add(connection)
        channels = self._subscriptions.get(connection)
        if channels is None:
            channels = self._subscriptions[connection] = set()
            connection.on_connection_lost = self.forget
        channels.add(channel)

    def unsubscribe(self, connection: Subscriber, channel: str) -> None:
        members = self.channels.get(channel)
        if members is not None:
            members.discard(connection)
            if not members:
                del self.channels[channel]
        channels = self._subscriptions.get(connection)
        if channels is not None:
            channels.discard(channel)

    def forget(self, connection: Subscriber) -> None:
        """Drop every subscription of `connection` (called when it is lost)."""
        for channel in self._subscriptions.pop(connection, ()):
            members = self.channels.get(channel)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self.channels[channel]

    def subscribers(self, channel: str) -> int:
        return len(self.channels.get(channel, ()))

    def deliver(self, channel: str, data: str | bytes) -> int:
        """Write `data` to every local subscriber of `channel`; return how many got it.

        The frame is built once (see prepared.py for compression); each write
        goes through the connection's send-queue bound.
        """
        members = self.channels.get(channel)
        if not members:
            return 0
        message = PreparedMessage(data)
        delivered = 0
        # A write may abort a connection over its send-queue bound, which
        # removes it from `members` through connection_lost: iterate a copy.
        for connection in tuple(members):
            if connection.deliver_prepared(message):
                delivered += 1
        return delivered
