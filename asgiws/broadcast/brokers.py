"""Brokers: how a published message reaches every worker's hub, and what history it keeps.

`MemoryBroker` (the default) keeps a bounded history ring per channel and hands
messages to this worker's hub directly. `RedisBroker` (redis_broker.py) keeps
history in one Redis stream per channel and reaches every worker and machine
through Redis pub/sub. Both give the same API: offsets, resume with `since`,
envelopes, history and presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import Any

from asgiws.broadcast.hub import Hub, Subscriber
from asgiws.broadcast.offsets import History, Offset, Subscription, new_epoch, parse_offset

__all__ = ["Broker", "MemoryBroker", "history_covers", "presence_json"]

# history() returns at most this many messages per call, whatever `limit` asks.
MAX_HISTORY_LIMIT = 10_000


def history_covers(since: Offset, epoch: str, latest_seq: int, first_seq: int | None) -> bool:
    """Whether every message after `since` is still in a history.

    `epoch` and `latest_seq` are the history's; `first_seq` is the seq of its
    oldest live entry (None when it holds none). The Redis read script applies
    the same rule (redis_broker.READ_SCRIPT).
    """
    if since.epoch != epoch or since.seq > latest_seq:
        return False
    if since.seq == latest_seq:
        return True  # nothing was published since: nothing to miss
    return first_seq is not None and first_seq <= since.seq + 1


def presence_json(info: Any) -> str:
    """`info` as the JSON text presence stores. Raises TypeError when it is not JSON-able."""
    try:
        return json.dumps(info, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"presence info must be JSON-able: {exc}") from None


class Broker:
    """Base: owns the worker's Hub; subclasses keep history and move messages between workers.

    `history_size`: messages kept per channel (0: none). `history_ttl`: seconds
    a message stays in history (0: no age limit).
    """

    def __init__(self, history_size: int, history_ttl: float) -> None:
        if history_size < 0:
            raise ValueError("broadcast_history_size must not be negative")
        if history_ttl < 0:
            raise ValueError("broadcast_history_ttl must not be negative")
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.hub = Hub(on_leave=self._on_leave)
        # channel -> {connection: presence info as JSON}, this worker's entries.
        self.local_presence: dict[str, dict[Subscriber, str]] = {}

    async def start(self) -> None:
        """Begin delivering; must not fail when the backend is down (it reconnects)."""

    async def stop(self) -> None:
        """Stop delivering and release connections."""

    async def publish(self, channel: str, data: str | bytes) -> str:
        """Store and deliver `data`; return its offset. Raises BroadcastUnavailable."""
        raise NotImplementedError

    async def subscribe(self, connection: Subscriber, channel: str, since: str | None = None,
                        envelope: bool = False, presence: Any = None) -> Subscription:
        """Replay what followed `since`, then deliver live. Raises BroadcastUnavailable, TypeError."""
        raise NotImplementedError

    def unsubscribe(self, connection: Subscriber, channel: str) -> None:
        self.hub.unsubscribe(connection, channel)

    async def history(self, channel: str, since: str | None = None, limit: int = 100) -> History:
        """Up to `limit` (offset, data), oldest first: after `since`, or the latest ones.

        Raises BroadcastUnavailable.
        """
        raise NotImplementedError

    async def presence(self, channel: str) -> list[Any]:
        """The presence info of every subscriber of `channel` that gave one. Raises BroadcastUnavailable."""
        raise NotImplementedError

    def _add_local_presence(self, connection: Subscriber, channel: str, info_json: str) -> None:
        self.local_presence.setdefault(channel, {})[connection] = info_json

    def _on_leave(self, connection: Subscriber, channel: str) -> None:
        entries = self.local_presence.get(channel)
        if entries is not None and entries.pop(connection, None) is not None:
            if not entries:
                del self.local_presence[channel]
            self._presence_left(connection, channel)

    def _presence_left(self, connection: Subscriber, channel: str) -> None:
        """A presence entry of this worker is gone (the Redis broker removes it there)."""


class _Ring:
    """One channel's in-process history: the last `size` messages and the channel's counters.

    Each ring has its own epoch: a ring dropped when idle and made again later
    cannot take an offset of the old one for a position in the new one.
    """

    __slots__ = ("entries", "epoch", "ms", "seq")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[Offset, str | bytes]] = deque(maxlen=size)
        self.epoch = new_epoch()
        self.ms = 0
        self.seq = 0


# An in-process channel with no subscriber and nothing left in its history is
# dropped at most this many seconds after that (a sweep), so that channels
# made per user or per request do not pile up in a long-running worker.
IDLE_SWEEP_INTERVAL = 60.0


class MemoryBroker(Broker):
    """In-process: reaches the subscribers of this worker only; history lives as long as the server.

    Epochs are made per channel and server start, so offsets from before a
    restart (or from a channel dropped when idle) say `recovered = False`.
    """

    def __init__(self, history_size: int, history_ttl: float) -> None:
        super().__init__(history_size, history_ttl)
        self._rings: dict[str, _Ring] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL)
            self.sweep()

    def sweep(self) -> int:
        """Drop the channels nobody here watches whose history holds nothing live; return how many."""
        idle = [channel for channel, ring in self._rings.items()
                if not self.hub.subscribers(channel) and not self._live_entries(ring)]
        for channel in idle:
            del self._rings[channel]
        return len(idle)

    def _ring(self, channel: str) -> _Ring:
        ring = self._rings.get(channel)
        if ring is None:
            ring = self._rings[channel] = _Ring(self.history_size)
        return ring

    def _live_entries(self, ring: _Ring) -> deque[tuple[Offset, str | bytes]]:
        """The ring without the messages older than history_ttl (dropped here)."""
        entries = ring.entries
        if self.history_ttl and entries:
            cutoff = time.time() * 1000 - self.history_ttl * 1000
            while entries and entries[0][0].ms < cutoff:
                entries.popleft()
        return entries

    def _latest(self, ring: _Ring) -> Offset:
        return Offset(ring.epoch, ring.ms, ring.seq)

    async def publish(self, channel: str, data: str | bytes) -> str:
        ring = self._ring(channel)
        ring.seq += 1
        ring.ms = max(ring.ms, int(time.time() * 1000))
        offset = Offset(ring.epoch, ring.ms, ring.seq)
        if self.history_size:
            ring.entries.append((offset, data))
            self._live_entries(ring)
        text = str(offset)
        self.hub.deliver(channel, data, text)
        return text

    def _after(self, ring: _Ring, since: Offset) -> tuple[bool, list[tuple[Offset, str | bytes]]]:
        entries = self._live_entries(ring)
        first_seq = entries[0][0].seq if entries else None
        if not history_covers(since, ring.epoch, ring.seq, first_seq):
            return False, []
        return True, [entry for entry in entries if entry[0].seq > since.seq]

    async def subscribe(self, connection: Subscriber, channel: str, since: str | None = None,
                        envelope: bool = False, presence: Any = None) -> Subscription:
        info_json = None if presence is None else presence_json(presence)
        ring = self._ring(channel)
        latest = str(self._latest(ring))
        since_offset = parse_offset(since)
        recovered, replayed = False, 0
        if since_offset is not None:
            # One loop step from here to hub.subscribe: nothing can be published
            # in between, so replay and live delivery meet without gap or duplicate.
            recovered, entries = self._after(ring, since_offset)
            if entries:
                self.hub.replay(connection, channel, [(str(o), d) for o, d in entries], envelope)
                replayed = len(entries)
        self.hub.subscribe(connection, channel, envelope)
        if info_json is not None:
            self._add_local_presence(connection, channel, info_json)
        return Subscription(channel, latest, recovered, replayed)

    async def history(self, channel: str, since: str | None = None, limit: int = 100) -> History:
        limit = max(0, min(limit, MAX_HISTORY_LIMIT))
        ring = self._rings.get(channel)
        if ring is None or not limit:
            return []
        entries = list(self._live_entries(ring))
        since_offset = parse_offset(since)
        if since_offset is None:
            chosen = entries[-limit:]
        else:
            after = since_offset.seq if since_offset.epoch == ring.epoch else 0
            chosen = [entry for entry in entries if entry[0].seq > after][:limit]
        return [(str(offset), data) for offset, data in chosen]

    async def presence(self, channel: str) -> list[Any]:
        return [json.loads(info) for info in self.local_presence.get(channel, {}).values()]
