"""Exceptions an app may catch around broadcast calls.

Two different situations, two names that cannot be mixed up:

- `BroadcastUnavailable`: the server has a broker, but Redis cannot take the
  call right now (down, restarting, unreachable). Transient: the server
  reconnects by itself; answer 503 or close the WebSocket with 1013 (Try Again
  Later) and let the client retry.
- `BroadcastNeedsAsgiws`: there is no asgiws broker at all (the app runs on
  uvicorn, hypercorn or a framework's test client, or outside any request).
  Permanent: a deployment or programming error, not something to retry.
"""

from __future__ import annotations

__all__ = ["BroadcastError", "BroadcastNeedsAsgiws", "BroadcastNotAvailable", "BroadcastUnavailable"]


class BroadcastError(Exception):
    """Base class of asgiws.broadcast errors."""


class BroadcastUnavailable(BroadcastError):
    """Redis cannot be reached right now; the call did not happen (nothing was published or subscribed).

    The server keeps reconnecting in the background; retrying later may work.
    """


class BroadcastNeedsAsgiws(BroadcastError, RuntimeError):
    """There is no asgiws broker: the app runs on another server, or outside a request."""


# The name before issue 14 (too close to BroadcastUnavailable); the same class.
BroadcastNotAvailable = BroadcastNeedsAsgiws
