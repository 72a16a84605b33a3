"""Server-side pub/sub for WebSocket apps, with history, resume and presence.

From any handler of an app served by asgiws::

    from asgiws.broadcast import Broadcast

    hub = Broadcast.from_scope(websocket.scope)
    sub = await hub.subscribe(websocket.scope, "room:lobby", since=last_offset)  # after accept
    offset = await hub.publish("room:lobby", "hello")   # text or bytes, from any handler
    await hub.unsubscribe(websocket.scope, "room:lobby")

The server writes each published message to every subscribed connection
itself (framed once, no app task per delivery); connections leave their
channels when they close. Each channel keeps a bounded history
(--broadcast-history-size, --broadcast-history-ttl): a client that
reconnects with the last offset it saw gets every message it missed, then the
live ones. With --broadcast-url redis://... messages, history and presence
are shared by every worker and machine using that Redis.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from asgiws.broadcast.brokers import Broker, MemoryBroker
from asgiws.broadcast.errors import (
    BroadcastError,
    BroadcastNeedsAsgiws,
    BroadcastNotAvailable,
    BroadcastUnavailable,
)
from asgiws.broadcast.offsets import History, Subscription
from asgiws.metrics import METRICS

__all__ = [
    "SCOPE_EXTENSION",
    "Broadcast",
    "BroadcastError",
    "BroadcastNeedsAsgiws",
    "BroadcastNotAvailable",
    "BroadcastUnavailable",
    "Broker",
    "MemoryBroker",
    "RedisBroker",
    "Subscription",
    "create_broker",
    "install",
    "uninstall",
]

# scope["extensions"][SCOPE_EXTENSION] on asgiws WebSocket scopes:
# {"broker": Broker, "connection": the WebSocketProtocol}.
SCOPE_EXTENSION = "asgiws.broadcast"

# The broker of the server running on each event loop (HTTP scopes carry no
# connection, so publish() from an HTTP handler finds its broker here).
_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broker] = weakref.WeakKeyDictionary()


def install(loop: asyncio.AbstractEventLoop, broker: Broker) -> None:
    """Make `broker` the one apps on `loop` reach (the server calls this)."""
    _brokers[loop] = broker


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    _brokers.pop(loop, None)


def broker_for(loop: asyncio.AbstractEventLoop) -> Broker | None:
    return _brokers.get(loop)


_NOT_ASGIWS = (
    "asgiws.broadcast needs the asgiws server (no broker on this event loop, no "
    "'asgiws.broadcast' scope extension): run the app with `asgiws module:app`"
)


class Broadcast:
    """The app's handle on the server's broker (cheap; make one per call if you like)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @classmethod
    def from_scope(cls, scope: dict[str, Any] | Any) -> Broadcast:
        """The broker serving `scope` (HTTP or WebSocket). Raises BroadcastNeedsAsgiws off asgiws."""
        extension = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
        if extension is not None:
            return cls(extension["broker"])
        return cls.current()

    @classmethod
    def current(cls) -> Broadcast:
        """The broker of the server on the running loop. Raises BroadcastNeedsAsgiws off asgiws."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise BroadcastNeedsAsgiws(_NOT_ASGIWS) from None
        broker = _brokers.get(loop)
        if broker is None:
            raise BroadcastNeedsAsgiws(_NOT_ASGIWS)
        return cls(broker)

    async def subscribe(self, scope: dict[str, Any] | Any, channel: str, since: str | None = None,
                        envelope: bool = False, presence: Any = None) -> Subscription:
        """Deliver `channel`'s messages to the WebSocket of `scope` until it closes or unsubscribes.

        `since`: an offset this channel gave earlier (from publish(), an
        envelope, or Subscription.offset); every message after it still in
        history is delivered first, in order, then the live ones, with no gap
        and no duplicate. The result's `recovered` says whether history
        covered `since` (False also when `since` is None or not an offset).
        `envelope=True`: each delivery is one JSON text frame
        {"channel", "offset", "data"} ("data_base64" for bytes).
        `presence`: JSON-able info listed by presence(channel) while subscribed.

        Raises BroadcastUnavailable when Redis cannot be reached (nothing was
        subscribed), TypeError for a non-WebSocket scope or non-JSON presence,
        RuntimeError before websocket.accept.
        """
        connection = _connection(scope)
        subscription = await self.broker.subscribe(connection, channel, since, envelope, presence)
        if connection.transport.is_closing():
            # Closed while the history was read: its connection_lost has run already.
            self.broker.hub.forget(connection)
        return subscription

    async def unsubscribe(self, scope: dict[str, Any] | Any, channel: str) -> None:
        self.broker.unsubscribe(_connection(scope), channel)

    async def publish(self, channel: str, data: str | bytes) -> str:
        """Send `data` (text frame for str, binary for bytes) to every subscriber of `channel`.

        Returns the message's offset (an opaque string, increasing per
        channel) once the broker has stored it (with Redis: once Redis
        replied). Raises BroadcastUnavailable when the broker (Redis) cannot
        take it: then nothing was stored or sent. TypeError for other data.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"publish() takes str or bytes, not {type(data).__name__}")
        if not isinstance(data, str):
            data = bytes(data)
        offset = await self.broker.publish(channel, data)
        METRICS.broadcast_published += 1
        return offset

    async def history(self, channel: str, since: str | None = None, limit: int = 100) -> History:
        """Up to `limit` (offset, data) of `channel`, oldest first.

        With `since`: the messages after it (from the oldest kept when `since`
        is from another epoch); without: the latest ones. Raises BroadcastUnavailable.
        """
        return await self.broker.history(channel, since, limit)

    async def presence(self, channel: str) -> list[Any]:
        """The `presence` info of every subscriber of `channel`, on every worker and machine.

        With Redis, entries of a worker that died without a word vanish within
        10 seconds (redis_broker.PRESENCE_TTL). Raises BroadcastUnavailable.
        """
        return await self.broker.presence(channel)

    def local_subscribers(self, channel: str) -> int:
        """How many connections of this worker are subscribed to `channel`."""
        return self.broker.hub.subscribers(channel)


def _connection(scope: dict[str, Any] | Any) -> Any:
    if scope.get("type") != "websocket":
        raise TypeError("subscribe/unsubscribe take a WebSocket scope (websocket.scope)")
    extension = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
    if extension is None:
        raise BroadcastNeedsAsgiws(_NOT_ASGIWS)
    connection = extension["connection"]
    if connection.conn is None:
        raise RuntimeError("subscribe after websocket.accept (the connection is not open yet)")
    return connection


def create_broker(url: str | None, history_size: int, history_ttl: float) -> Broker:
    """The broker for --broadcast-url (None: in-process).

    Chosen here rather than in brokers.py, so that redis_broker.py builds on
    brokers.py and nothing imports back.
    Raises ValueError for an unknown scheme or a negative history option,
    RuntimeError when the redis client is not installed.
    """
    if url is None:
        return MemoryBroker(history_size, history_ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from asgiws.broadcast.redis_broker import RedisBroker  # the redis client is an extra

        return RedisBroker(url, history_size, history_ttl)
    raise ValueError(f"broadcast_url: unsupported scheme in {url!r} (expected redis:// or rediss://)")


def __getattr__(name: str) -> Any:
    # Imported on first use: the redis client is an extra (asgiws[redis]).
    if name == "RedisBroker":
        from asgiws.broadcast.redis_broker import RedisBroker

        return RedisBroker
    raise AttributeError(name)
