"""One worker's subscribers: channel -> connections, and delivery to them."""

from __future__ import annotations

import asyncio
from typing import Protocol

from asgiws.broadcast.prepared import PreparedMessage
from asgiws.metrics import METRICS

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    """What the hub needs from a connection (WebSocketProtocol provides it)."""

    on_connection_lost: object

    def deliver_prepared(self, messages: list[PreparedMessage]) -> bool: ...


class Hub:
    """Local subscriptions of one worker. Not thread-safe: use it on the server's loop."""

    def __init__(self) -> None:
        self.channels: dict[str, set[Subscriber]] = {}
        # The reverse map, so that a lost connection leaves every channel at once.
        self._subscriptions: dict[Subscriber, set[str]] = {}
        # Messages delivered during this loop iteration, written at its end.
        self._pending: dict[Subscriber, list[PreparedMessage]] = {}

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
        self._pending.pop(connection, None)
        for channel in self._subscriptions.pop(connection, ()):
            members = self.channels.get(channel)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self.channels[channel]

    def subscribers(self, channel: str) -> int:
        return len(self.channels.get(channel, ()))

    def deliver(self, channel: str, data: str | bytes) -> int:
        """Queue `data` for every local subscriber of `channel`; return how many.

        Must run on the server's loop. The frame is built once (see prepared.py
        for compression). What is queued during one loop iteration goes to each
        connection in one write at the end of it (a burst costs one system call
        per connection, not one per message), through the connection's
        send-queue bound.
        """
        members = self.channels.get(channel)
        if not members:
            return 0
        message = PreparedMessage(data)
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self._flush)
        for connection in members:
            queued = pending.get(connection)
            if queued is None:
                pending[connection] = [message]
            else:
                queued.append(message)
        METRICS.broadcast_deliveries += len(members)
        return len(members)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for connection, messages in pending.items():
            connection.deliver_prepared(messages)
