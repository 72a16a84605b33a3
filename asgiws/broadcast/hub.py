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

    def shutdown(self, close_code: int, reason: str = "") -> None: ...


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
        # Messages delivered during this loop iteration, written at its end, in the order queued.
        # The common iteration has one publish: it waits as one batch (its subscribers, copied,
        # and a list of one message that every connection is given), so a broadcast to 19,000
        # allocates no list per subscriber, whose 19,000 live containers set off the collector's
        # full passes over every connection's objects. Anything queued beside it spreads the
        # batch into per-connection lists first, so each connection still gets one write.
        self._batch: tuple[set[Subscriber], list[PreparedMessage]] | None = None
        self._pending: dict[Subscriber, list[PreparedMessage]] = {}
        self._flush_armed = False
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
        if self._batch is not None:
            self._batch[0].discard(connection)
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

    def close_subscribers(self, channel: str, code: int, reason: str) -> int:
        """Close every local subscriber of `channel` from the server's side; how many there were.

        For a gap in the channel that this worker cannot fill: each client then resumes from
        the last offset it saw, and its own subscribe(since=...) says whether it missed anything.
        """
        members = self.channels.get(channel)
        if members is None:
            return 0
        connections = [*members.plain, *members.enveloped]
        for connection in connections:
            connection.shutdown(code, reason)
        return len(connections)

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
        self._spread_batch()
        self._arm_flush()
        pending = self._pending
        queued = pending.get(connection)
        if queued is None:
            pending[connection] = messages
        else:
            queued.extend(messages)

    def _queue(self, connections: set[Subscriber], message: PreparedMessage) -> None:
        if not self._flush_armed:
            self._arm_flush()
            self._batch = (set(connections), [message])
            return
        self._spread_batch()
        pending = self._pending
        for connection in connections:
            queued = pending.get(connection)
            if queued is None:
                pending[connection] = [message]
            else:
                queued.append(message)

    def _arm_flush(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _spread_batch(self) -> None:
        """Turn the waiting batch into per-connection lists (the flush it armed stays armed)."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        connections, messages = batch
        self._pending = {connection: list(messages) for connection in connections}

    def _flush(self) -> None:
        self._flush_armed = False
        batch, self._batch = self._batch, None
        if batch is not None:  # nothing else was queued: every connection is given the same list
            connections, messages = batch
            for connection in connections:
                connection.deliver_prepared(messages)  # which neither keeps nor changes it
            return
        pending, self._pending = self._pending, {}
        for connection, messages in pending.items():
            connection.deliver_prepared(messages)
