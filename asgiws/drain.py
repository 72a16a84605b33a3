"""Drain: what a worker tells its apps before it closes their WebSockets, and when it closes them.

Every HTTP and WebSocket scope carries the worker's one `Drain` as
`scope["extensions"]["asgiws.drain"]` (Starlette and FastAPI expose it as
`websocket.scope["extensions"]["asgiws.drain"]`). It is set when the worker
begins to shut down (SIGTERM, Ctrl-C) or is replaced (SIGHUP, --reload,
recycling): from then on the worker accepts no new connection, and its
WebSockets keep serving for --ws-drain-time seconds; then those left are
closed with `close_code` (1001 going away, 1012 service restart), the i-th of
N at i * --ws-close-spread / N seconds, so that thousands of clients do not
reconnect in the same 100 ms.

    drain = websocket.scope["extensions"]["asgiws.drain"]
    await drain.wait()                 # returns once the worker drains
    drain.seconds_left()               # until the server's closes begin
    drain.close_code                   # 1001 or 1012

The lifespan `shutdown` event comes after every connection is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from asgiws.websocket.frames import CloseCode

SCOPE_KEY = "asgiws.drain"

T = TypeVar("T")


class Drain:
    """Set once, when the worker starts draining; awaited by apps (an asyncio.Event with a deadline).

    `deadline` is in `time.monotonic()` seconds (float("inf") until set): when the
    server begins closing the WebSockets still open. Apps that close their own
    connections before it choose their close code and reason.
    """

    __slots__ = ("_event", "close_code", "close_spread", "deadline")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.deadline = float("inf")
        self.close_code: int = CloseCode.GOING_AWAY  # SIGHUP, --reload and recycling: SERVICE_RESTART
        self.close_spread = 0.0  # seconds over which the server's closes are spread after the deadline

    def is_set(self) -> bool:
        """True once the worker is draining."""
        return self._event.is_set()

    async def wait(self) -> bool:
        """Return (True) once the worker is draining; at once when it already is."""
        return await self._event.wait()

    def seconds_left(self) -> float:
        """Seconds until the server begins closing the WebSockets left (0 once past; inf until set)."""
        return max(0.0, self.deadline - time.monotonic())

    def begin(self, drain_time: float, close_code: int, close_spread: float) -> None:
        """Start draining (called by the server, on its event loop): the closes begin in `drain_time` s."""
        if self.is_set():
            return
        self.deadline = time.monotonic() + drain_time
        self.close_code = close_code
        self.close_spread = close_spread
        self._event.set()

    def __repr__(self) -> str:
        state = f"draining, {self.seconds_left():.1f}s left" if self.is_set() else "serving"
        return f"<Drain {state}>"


def close_offsets(count: int, spread: float) -> list[float]:
    """When each of `count` closes happens, in seconds after the first: the i-th at i * spread / count.

    >>> close_offsets(4, 2.0)
    [0.0, 0.5, 1.0, 1.5]
    """
    return [index * spread / count for index in range(count)]


async def close_spread_out(connections: Sequence[T], spread: float, close: Callable[[T], None],
                           stop: Callable[[], bool]) -> None:
    """Call `close(connection)` for each of `connections` at its close_offsets() time (seconds);
    once `stop()` is true (a second SIGTERM), close the rest at once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for connection, offset in zip(connections, close_offsets(len(connections), spread)):
        delay = start + offset - loop.time()
        if delay > 0 and not stop():
            await asyncio.sleep(delay)
        close(connection)
