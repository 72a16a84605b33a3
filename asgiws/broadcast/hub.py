"""One worker's subscribers: channel -> connections, and delivery to them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from asgiws.broadcast.offsets import envelope_text
from asgiws.broadcast.prepared import PreparedMessage
from asgiws.metrics import METRICS

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    """What the hub needs from a connection (WebSocketProtocol provides it)."""

    on_connection_lost: object

    def deliver_prepared(self, messages: list[PreparedMessage]) -> bool: ...


class Members:
    """The local subscribers of one channel: those that get the data as published, and enveloped ones."""

    __slots__ = ("enveloped", "plain")

    def __init__(self) -> None:
        self.plain: set[Subscriber] = set()
        self.enveloped: set[Subscriber] = set()

    def __len__(self) -> int:
        return len(self.plain) + len(self.enveloped)


class Hub:
    """Local subscriptions of one worker. Not thread-safe: use it on the server's loop.

    `on_leave(connection, channel)` is called after a connection leaves a
    channel (unsubscribe or connection lost): the broker drops its presence
    entry, and stops watching the channel once nobody local is left.
    """

    def __init__(self, on_leave: Callable[[Subscriber, str], None] | None = None) -> None:
        self.channels: dict[str, Members] = {}
        # The reverse map (connection -> channels), so that a lost connection
        # leaves every channel at once.
        self._subscriptions: dict[Subscriber, set[str]] = {}
        # Messages delivered during this loop iteration, written at its end.
        self._pending: dict[Subscriber, list[PreparedMessage]] = {}
        self.on_leave = on_leave

    def subscribe(self, connection: Subscriber, channel: str, envelope: bool = False) -> None:
        members = self.channels.get(channel)
        if members is None:
            members = self.channels[channel] = Members()
        # Subscribing again changes the form of delivery, never doubles it.
        (members.plain if envelope else members.enveloped).discard(connection)
        (members.enveloped if envelope else members.plain).add(connection)
        channels = self._subscriptions.get(connection)
        if channels is None:
            channels = self._subscriptions[connection] = set()
            connection.on_connection_lost = self.forget
        channels.add(channel)

    def unsubscribe(self, connection: Subscriber, channel: str) -> None:
        channels = self._subscriptions.get(connection)
        if channels is None or channel not in channels:
            return
        channels.discard(channel)
        self._leave(connection, channel)

    def forget(self, connection: Subscriber) -> None:
        """Drop every subscription of `connection` (called when it is lost)."""
        self._pending.pop(connection, None)
        for channel in self._subscriptions.pop(connection, ()):
            self._leave(connection, channel)

    def _leave(self, connection: Subscriber, channel: str) -> None:
        members = self.channels.get(channel)
        if members is not None:
            members.plain.discard(connection)
            members.enveloped.discard(connection)
            if not members:
                del self.channels[channel]
        if self.on_leave is not None:
            self.on_leave(connection, channel)

    def subscribers(self, channel: str) -> int:
        members = self.channels.get(channel)
        return 0 if members is None else len(members)

    def is_subscribed(self, connection: Subscriber, channel: str) -> bool:
        return channel in self._subscriptions.get(connection, ())

    def deliver(self, channel: str, data: str | bytes, offset: str = "",
                exclude: set[Subscriber] | None = None) -> int:
        """Queue `data` (published at `offset`) for every local subscriber of `channel`; return how many.

        Must run on the server's loop. Each frame is built once per message
        (the data as published, and the JSON envelope only when a subscriber
        asked for it; see prepared.py for compression). What is queued during
        one loop iteration goes to each connection in one write at the end of
        it (a burst costs one system call per connection, not one per
        message), through the connection's send-queue bound.
        """
        members = self.channels.get(channel)
        if not members:
            return 0
        plain, enveloped = members.plain, members.enveloped
        if exclude:
            plain, enveloped = plain - exclude, enveloped - exclude
        if plain:
            self._queue(plain, PreparedMessage(data))
        if enveloped:
            self._queue(enveloped, PreparedMessage(envelope_text(channel, offset, data)))
        delivered = len(plain) + len(enveloped)
        METRICS.broadcast_deliveries += delivered
        return delivered

    def replay(self, connection: Subscriber, channel: str, entries: Iterable[tuple[str, str | bytes]],
               envelope: bool) -> None:
        """Queue history `entries` ((offset, data), oldest first) for one connection, before later ones."""
        if envelope:
            messages = [PreparedMessage(envelope_text(channel, offset, data)) for offset, data in entries]
        else:
            messages = [PreparedMessage(data) for _, data in entries]
        if not messages:
            return
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self._flush)
        queued = pending.get(connection)
        if queued is None:
            pending[connection] = messages
        else:
            queued.extend(messages)

    def _queue(self, connections: set[Subscriber], message: PreparedMessage) -> None:
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self._flush)
        for connection in connections:
            queued = pending.get(connection)
            if queued is None:
                pending[connection] = [message]
            else:
                queued.append(message)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for connection, messages in pending.items():
            connection.deliver_prepared(messages)
