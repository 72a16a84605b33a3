"""One timer per worker for every WebSocket's heartbeat (a timer wheel), not one loop timer each.

A loop timer per connection allocates a TimerHandle per ping that lives for the
whole ping interval: with 19,000 idle connections at the default 20 s that is
950 handles a second, each promoted by the garbage collector to its oldest
generation before it fires, so full collections over every connection's
objects keep coming (py-spy, 19,000 idle connections on one worker: 24% of
the worker's samples in gc_collect_main, 28% under TimerHandle's allocation).
Here connections due within the same tick share a slot (a dict used as an
ordered set), and one loop timer is armed for the earliest slot.

The wheel also keeps each ping's pong deadline (--ws-ping-timeout): a loop
timer armed per ping and cancelled by its pong was the idle worker's largest
cost after the pings themselves (py-spy, 19,000 idle connections: 34.5% of
the worker's samples on that `call_at` line, the GC work its allocations set
off included). A connection is in one slot, at its next ping or its pong
deadline, whichever comes first.

A ping goes out, and a missing pong is acted on, between the time due and a
tick after it: the tick is 1/20 of the interval (at most 1 s), so at most 5%
late, and never early.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

# Slots per ping interval: the lateness bound of a ping, as a fraction of the interval.
TICKS_PER_INTERVAL = 20
MAX_TICK = 1.0  # seconds: the default 20 s interval gets 1 s ticks
# `_armed_for` while the due slots are pinged: their connections schedule again, and the one timer
# for the earliest slot is armed once they are done, not once per connection.
_FIRING = -1


class Pinged(Protocol):
    """A connection woken when its slot comes (it asks for its next slot itself)."""

    def on_heartbeat(self, due: float) -> None:
        """`due`: the slot's time (loop clock), at or after the time the connection asked for."""


class PingWheel:
    """The next ping of every connection of one worker, in slots of `tick` seconds."""

    __slots__ = ("_armed_for", "_handle", "_loop", "_slots", "interval", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        """`interval`: seconds between a connection's pings (--ws-ping-interval, > 0)."""
        self._loop = loop
        self.interval = interval
        self.tick = min(interval / TICKS_PER_INTERVAL, MAX_TICK)
        self._slots: dict[int, dict[Pinged, None]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    def __len__(self) -> int:
        """Connections waiting for a ping."""
        return sum(map(len, self._slots.values()))

    def schedule(self, connection: Pinged, at: float | None = None) -> int:
        """Wake `connection` at `at` (loop clock; default: one interval from now), up to a tick late.

        Returns its slot, for `cancel`.
        """
        if at is None:
            at = self._loop.time() + self.interval
        slot = math.ceil(at / self.tick)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = {}
            if self._armed_for is None or slot < self._armed_for:
                self._arm(slot)
        members[connection] = None
        return slot

    def cancel(self, connection: Pinged, slot: int) -> None:
        """Forget `connection`'s ping in `slot` (it closed); the slot's timer stays until it fires."""
        members = self._slots.get(slot)
        if members is not None:
            members.pop(connection, None)

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = slot
        self._handle = self._loop.call_at(slot * self.tick, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = _FIRING
        now = self._loop.time()
        # The loop may wake a little before the slot's time (its clock resolution): slots due by then.
        due = sorted(slot for slot in self._slots if slot * self.tick <= now + self.tick / 2)
        for slot in due:
            due_time = slot * self.tick
            for connection in self._slots.pop(slot):
                connection.on_heartbeat(due_time)
        self._armed_for = None
        if self._slots:
            self._arm(min(self._slots))
