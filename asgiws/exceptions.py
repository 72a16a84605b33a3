"""The exceptions asgiws raises, and where each one lives.

Defined here: the errors both protocols share. The others stay beside the code
that raises them, because their modules must stay free of imports this one
would drag in (the codec never imports asyncio, the broadcast errors are its
public API); this docstring is the one map of them all::

    Exception
    ├── OSError
    │   └── ClientDisconnected          here: send() after the client went away,
    │                                   HTTP and WebSocket alike (ASGI 2.4)
    ├── RuntimeError                    an ASGI message the server cannot send:
    │   │                               bad status, bad header, wrong order
    │   │                               (raised to the app; 500 / 1011 if uncaught)
    │   ├── websocket.ConnectionClosedError   the codec: send after the close
    │   └── broadcast.BroadcastNeedsAsgiws    no asgiws broker for this app
    │                                         (BroadcastNotAvailable: its old name)
    ├── websocket.ProtocolError         a peer broke RFC 6455 or 7692; carries
    │                                   its close code (1002, 1007, 1009 ...)
    │                                   and never leaves the codec
    ├── websocket.HandshakeError        an upgrade request refused; carries the
    │                                   HTTP status (400, 426) and its headers
    ├── broadcast.BroadcastError        base of the pub/sub errors
    │   ├── BroadcastUnavailable        Redis cannot take the call right now
    │   └── BroadcastNeedsAsgiws        (also a RuntimeError, above)
    ├── importer.ImportFromStringError  APP is not "module:attribute"
    └── server.StartupError             the server could not start (bind, lifespan)

`ValueError` comes from the header checks of `asgiws.headers` (the codec's
`accept_response` raises it as is; the protocols turn it into RuntimeError for
the app) and from `Config` for an invalid option.

This module imports nothing, so any layer (the sans-I/O codec included) may
import it.
"""

from __future__ import annotations

__all__ = ["ClientDisconnected"]


class ClientDisconnected(OSError):
    """Raised by an ASGI send() once the client has gone away.

    ASGI 2.4: "If send() is called on a closed connection the server should
    raise a server-specific subclass of IOError" (OSError). One class for HTTP
    and WebSocket, so an app or middleware catches both with one clause.
    """
