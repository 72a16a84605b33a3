"""What the HTTP and WebSocket protocols of one worker share.

`ServerState` is created once per `Server`; every protocol instance holds a
reference to it. It is the only mutable state shared between connections.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from asgiws.config import HTTP_READ_SIZE
from asgiws.drain import Drain
from asgiws.fdlimit import OpenFileWatch
from asgiws.protocols.heartbeat import PingWheel


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
    # Set when the worker drains; every HTTP and WebSocket scope carries it (asgiws.drain).
    drain: Drain = field(default_factory=Drain)
    # Lifespan state; each connection's scope gets a shallow copy.
    lifespan_state: dict[str, Any] = field(default_factory=dict)
    # The buffer every HTTP connection of this worker reads into (one event loop
    # parses one read at a time); per loop, never per process, since loops in
    # other threads read while the GIL is released.
    read_buffer: bytearray = field(default_factory=lambda: bytearray(HTTP_READ_SIZE))
    # Logs when open files near RLIMIT_NOFILE (set by the server at start-up); add_connection calls it
    # from `watch_files_from` connections on, so below that it costs one comparison.
    open_files: OpenFileWatch | None = None
    watch_files_from: int = sys.maxsize
    # The next ping of every WebSocket of this worker (made by the first one that pings).
    ping_wheel: PingWheel | None = None

    def over_connection_limit(self, client_ip: str | None, limit_per_ip: int | None) -> bool:
        """True when `client_ip` already holds `limit_per_ip` connections."""
        if limit_per_ip is None or client_ip is None:
            return False
        return self.connections_per_ip.get(client_ip, 0) >= limit_per_ip

    def add_connection(self, connection: Connection, client_ip: str | None) -> None:
        """Register a new transport's protocol (called from connection_made)."""
        self.connections.add(connection)
        if client_ip is not None:
            self.connections_per_ip[client_ip] = self.connections_per_ip.get(client_ip, 0) + 1
        if len(self.connections) >= self.watch_files_from and self.open_files is not None:
            self.open_files.connection_opened(len(self.connections))

    def hand_over(self, old: Connection, new: Connection) -> None:
        """The same transport changes protocol (HTTP upgrade): the per-IP count stays."""
        self.connections.discard(old)
        self.connections.add(new)

    def remove_connection(self, connection: Connection, client_ip: str | None) -> None:
        """Forget a closed transport's protocol (called from connection_lost)."""
        self.connections.discard(connection)
        if client_ip is not None:
            remaining = self.connections_per_ip.get(client_ip, 1) - 1
            if remaining > 0:
                self.connections_per_ip[client_ip] = remaining
            else:
                self.connections_per_ip.pop(client_ip, None)
