"""Exceptions an app may catch around broadcast calls."""

from __future__ import annotations

__all__ = ["BroadcastError", "BroadcastNotAvailable", "BroadcastUnavailable"]


class BroadcastError(Exception):
    """Base class of asgiws.broadcast errors."""


class BroadcastUnavailable(BroadcastError):
    """The broker (Redis) cannot be reached right now; the publish did not happen.

    The server keeps reconnecting in the background; retrying later may work.
    """


class BroadcastNotAvailable(BroadcastError, RuntimeError):
    """There is no asgiws broker: the app runs on another server, or outside a request."""
