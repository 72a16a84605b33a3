"""Server-side pub/sub for WebSocket apps.

From any handler of an app served by asgiws::

    from asgiws.broadcast import Broadcast

    broadcast = Broadcast.from_scope(websocket.scope)
    await broadcast.subscribe(websocket.scope, "room:lobby")   # after accept
    await broadcast.publish("room:lobby", "hello")             # text or bytes, from any handler
    await broadcast.unsubscribe(websocket.scope, "room:lobby")

The server writes each published message to every subscribed connection
itself (framed once, no app task per delivery); connections leave their
channels when they close. With --broadcast-url redis://... messages reach the
subscribers of every worker and machine sharing that Redis.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from asgiws.broadcast.brokers import Broker, MemoryBroker, RedisBroker, create_broker
from asgiws.broadcast.errors import BroadcastError, BroadcastNotAvailable, BroadcastUnavailable
from asgiws.metrics import METRICS

__all__ = [
    "SCOPE_EXTENSION",
    "Broadcast",
    "BroadcastError",
    "BroadcastNotAvailable",
    "BroadcastUnavailable",
    "Broker",
    "MemoryBroker",
    "RedisBroker",
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
        """The broker serving `scope` (HTTP or WebSocket). Raises BroadcastNotAvailable off asgiws."""
        extension = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
        if extension is not None:
            return cls(extension["broker"])
        return cls.current()

    @classmethod
    def current(cls) -> Broadcast:
        """The broker of the server on the running loop. Raises BroadcastNotAvailable off asgiws."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise BroadcastNotAvailable(_NOT_ASGIWS) from None
        broker = _brokers.get(loop)
        if broker is None:
            raise BroadcastNotAvailable(_NOT_ASGIWS)
        return cls(broker)

    async def subscribe(self, scope: dict[str, Any] | Any, channel: str) -> None:
        """Deliver `channel`'s messages to the WebSocket of `scope` until it closes or unsubscribes."""
        self.broker.hub.subscribe(_connection(scope), channel)

    async def unsubscribe(self, scope: dict[str, Any] | Any, channel: str) -> None:
        self.broker.hub.unsubscribe(_connection(scope), channel)

    async def publish(self, channel: str, data: str | bytes) -> None:
        """Send `data` (text frame for str, binary for bytes) to every subscriber of `channel`.

        Raises BroadcastUnavailable when the broker (Redis) cannot take it.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"publish() takes str or bytes, not {type(data).__name__}")
        await self.broker.publish(channel, data)
        METRICS.broadcast_published += 1

    def local_subscribers(self, channel: str) -> int:
        """How many connections of this worker are subscribed to `channel`."""
        return self.broker.hub.subscribers(channel)


def _connection(scope: dict[str, Any] | Any) -> Any:
    if scope.get("type") != "websocket":
        raise TypeError("subscribe/unsubscribe take a WebSocket scope (websocket.scope)")
    extension = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
    if extension is None:
        raise BroadcastNotAvailable(_NOT_ASGIWS)
    connection = extension["connection"]
    if connection.conn is None:
        raise RuntimeError("subscribe after websocket.accept (the connection is not open yet)")
    return connection
