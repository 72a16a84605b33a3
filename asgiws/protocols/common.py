"""What the HTTP and WebSocket protocols of one worker share.

`ServerState` is created once per `Server`; every protocol instance holds a
reference to it. It is the only mutable state shared between connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol


class Connection(Protocol):
    """What the server needs from every open connection to shut down gracefully."""

    def shutdown(self, close_code: int) -> None:
        """Begin a graceful close.

        HTTP: finish the request in flight, then close; close at once if idle.
        WebSocket: send a close frame with `close_code` (1001 going away on
        shutdown, 1012 service restart on restart/recycle), wait for the
        handshake (bounded by ws_close_timeout), then close the transport.
        The connection removes itself from `ServerState.connections` when its
        transport is closed.
        """


@dataclass(slots=True, eq=False)
class ServerState:
    """Counters and registries shared by the protocols of one worker."""

    # Requests and WebSocket handshakes served, for --limit-max-requests.
    total_requests: int = 0
    # Every open connection (HTTP or WebSocket), for graceful shutdown.
    connections: set[Connection] = field(default_factory=set)
    # Every running app task, for --limit-concurrency and shutdown.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Open connections per client address, for --limit-connections-per-ip.
    connections_per_ip: dict[str, int] = field(default_factory=dict)
    # Headers added to every response (Server, --header), pre-encoded once.
    default_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Lifespan state; each connection's scope gets a shallow copy.
    lifespan_state: dict[str, Any] = field(default_factory=dict)
