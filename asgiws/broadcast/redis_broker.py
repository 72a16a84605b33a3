"""The Redis broker: history in one stream per channel, live delivery through pub/sub.

Redis layout, for a channel C (the braces keep one channel's keys in one
cluster slot):

- ``asgiws:{C}:meta``: hash ``epoch``, ``seq`` (messages published), ``ms``
  (the last one's time), ``sexp`` and ``mexp`` (until when the two keys are
  known to live); expires 1.0-1.1x META_TTL after the last publish.
- ``asgiws:{C}:history``: stream, one entry per message, ID ``MS-SEQ``, fields
  ``d`` (kind byte ``t`` or ``b`` + the data) and ``p`` (the publish call's id);
  capped at --broadcast-history-size entries; entries older than
  --broadcast-history-ttl are skipped by reads and trimmed from time to time;
  the key expires 1.0-1.1x that ttl after the last publish.
- pub/sub channel ``asgiws:C``: ``OFFSET SP KIND DATA`` per message.

PUBLISH_SCRIPT writes all three in one script, so a message is in history
exactly when it went out live, and its offset is the same in both. Other
services publish by calling that script (docs/broadcast.md shows the
redis-cli call; `python -m asgiws.broadcast publish URL CHANNEL MESSAGE`
does it).

Each worker SUBSCRIBEs only to the channels its connections watch, plus one
channel of its own that keeps the pub/sub connection open. It remembers, per
channel, the last offset it delivered: a message whose seq is not the next one
(the worker was away from Redis, or a message overtook a subscription's history
read) makes it read the gap from history before anything after it, and each
reconnect re-reads every watched channel from that offset. Deliveries are
never doubled: the channel's seq only moves forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from asgiws.broadcast.brokers import MAX_HISTORY_LIMIT, Broker, presence_json
from asgiws.broadcast.errors import BroadcastUnavailable
from asgiws.broadcast.hub import Subscriber
from asgiws.broadcast.offsets import History, Offset, Subscription, new_epoch, parse_offset
from asgiws.websocket import CloseCode

__all__ = ["CHANNEL_PREFIX", "PRESENCE_SCRIPT", "PUBLISH_SCRIPT", "READ_SCRIPT", "RedisBroker", "redis_keys"]

logger = logging.getLogger("asgiws.error")

# Redis pub/sub channel names are "asgiws:" + the app's channel, so that one
# Redis can carry other traffic; payloads carry a kind byte before the data.
CHANNEL_PREFIX = "asgiws:"
_TEXT, _BINARY = b"t", b"b"

# Reconnect backoff, in seconds: doubles from the first to the cap. History
# covers what is published meanwhile; the cap bounds how late it arrives.
RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0
# A call waits this many seconds for Redis before failing (BroadcastUnavailable).
REDIS_SOCKET_TIMEOUT = 2.0
# A channel's epoch and counters outlive its history by this long (seconds), so
# that a client back after a long idle spell is told "nothing missed" rather
# than "history lost". About 100 bytes per channel.
META_TTL = 30 * 24 * 3600
# Presence entries are refreshed every PRESENCE_REFRESH_INTERVAL seconds and
# expire PRESENCE_TTL seconds after the last refresh: the entries of a worker
# that dies without a word vanish within PRESENCE_TTL.
PRESENCE_TTL = 10.0
PRESENCE_REFRESH_INTERVAL = 3.0
# Connections one worker opens to Redis at most (the pub/sub one included);
# more concurrent calls wait for a free one.
REDIS_MAX_CONNECTIONS = 32
# History is read in pages of this many entries (one script call each).
READ_PAGE = 1000
# The close reason a worker's subscribers get when it missed more of a channel than history
# holds (away from Redis too long): the client reconnects with its last offset, as after any close.
GAP_CLOSE_REASON = "broadcast messages missed; resume from your last offset"

# KEYS: meta, history. ARGV: pub/sub channel, kind+data, epoch to use if the
# channel has none, history size, history ttl (ms, 0: none), meta ttl (ms),
# publish id, retry (1 on the second attempt of one publish call), the time
# (ms since the epoch; the channel's times never go back, whatever the clock).
# Returns the offset.
#
# Written for the hot path: each redis.call from a script costs Redis several
# microseconds (a bare PUBLISH under 1), so a publish makes four (HMGET, HSET,
# XADD, PUBLISH). The keys' expiries are pushed out only when they have run
# below their lifetime (to 1.1x it; the meta hash remembers until when, as
# `sexp` and `mexp`), and entries past the history ttl are trimmed at those
# same moments: until then reads skip them (READ_SCRIPT), and MAXLEN bounds
# the stream meanwhile.
PUBLISH_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local size, ttl, meta_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ms = tonumber(ARGV[9])
local state = redis.call('HMGET', meta, 'epoch', 'seq', 'ms', 'sexp', 'mexp')
local epoch, seq, last_ms = state[1], 1, 0
local stream_until, meta_until = tonumber(state[4] or '0'), tonumber(state[5] or '0')
if epoch then
  if ARGV[8] == '1' and size > 0 then
    -- The first attempt may have run before its connection died: find it by its id.
    for _, entry in ipairs(redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 64)) do
      if entry[2][4] == ARGV[7] then return epoch .. ':' .. entry[1] end
    end
  end
  seq, last_ms = tonumber(state[2]) + 1, tonumber(state[3])
else
  epoch = ARGV[3]
  redis.call('DEL', stream)
end
if ms < last_ms then ms = last_ms end
local id = string.format('%d-%d', ms, seq)
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, id, 'd', ARGV[2], 'p', ARGV[7])
  local keep = ttl > 0 and ttl or meta_ttl
  if stream_until - ms < keep then
    if ttl > 0 then redis.call('XTRIM', stream, 'MINID', string.format('%d-0', ms - ttl)) end
    stream_until = ms + keep + math.floor(keep / 10)
    redis.call('PEXPIREAT', stream, string.format('%d', stream_until))
  end
end
local refresh_meta = meta_until - ms < meta_ttl
if refresh_meta then meta_until = ms + meta_ttl + math.floor(meta_ttl / 10) end
redis.call('HSET', meta, 'epoch', epoch, 'seq', string.format('%d', seq), 'ms', string.format('%d', ms),
           'sexp', string.format('%d', stream_until), 'mexp', string.format('%d', meta_until))
if refresh_meta then redis.call('PEXPIREAT', meta, string.format('%d', meta_until)) end
local offset = epoch .. ':' .. id
redis.call('PUBLISH', ARGV[1], offset .. ' ' .. ARGV[2])
return offset
"""

# KEYS: meta, history. ARGV: mode ("after" or "latest"), since epoch, since
# stream id, since seq, limit, history ttl (ms), epoch to use if the channel
# has none, meta ttl (ms), the time (ms since the epoch).
# Returns {latest offset, covered (1/0), id, kind+data, id, kind+data, ...}:
# "after": up to limit entries after `since` (from the oldest when the epoch
# differs); covered = every message after since is among them or later ones
# (brokers.history_covers is the same rule). "latest": the newest `limit`.
READ_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[7]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'ms', 0)
  redis.call('PEXPIRE', meta, ARGV[8])
end
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local latest = epoch .. ':' .. redis.call('HGET', meta, 'ms') .. '-' .. seq
local limit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local cutoff = -1
if ttl > 0 then cutoff = tonumber(ARGV[9]) - ttl end
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local entries
if limit == 0 then
  entries = {}
elseif ARGV[1] == 'latest' then
  entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
  local ordered = {}
  for i = #entries, 1, -1 do ordered[#ordered + 1] = entries[i] end
  entries = ordered
else
  local start = '-'
  if ARGV[2] == epoch then start = '(' .. ARGV[3] end
  entries = redis.call('XRANGE', stream, start, '+', 'COUNT', limit)
end
local result = {latest, 0}
local first_seq = nil
for _, entry in ipairs(entries) do
  local ms, entry_seq = split(entry[1])
  if ms >= cutoff then
    if not first_seq then first_seq = entry_seq end
    result[#result + 1] = entry[1]
    result[#result + 1] = entry[2][2]
  end
end
if ARGV[1] == 'after' and ARGV[2] == epoch then
  local since = tonumber(ARGV[4])
  if since == seq or (since < seq and first_seq and first_seq <= since + 1) then result[2] = 1 end
end
return result
"""

# KEYS: presence hash (member -> info), presence expiry zset (member -> ms).
# ARGV: op ("add", "remove", "get"), ttl (ms), the time (ms since the epoch),
# then members (and infos for add). Workers' clocks need agree only to well
# within PRESENCE_TTL.
PRESENCE_SCRIPT = """
local hash, expiry = KEYS[1], KEYS[2]
local ttl, ms = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[1] == 'add' then
  for i = 4, #ARGV, 2 do
    redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
    redis.call('ZADD', expiry, ms + ttl, ARGV[i])
  end
  redis.call('PEXPIRE', hash, 2 * ttl)
  redis.call('PEXPIRE', expiry, 2 * ttl)
  return 0
elseif ARGV[1] == 'remove' then
  for i = 4, #ARGV do
    redis.call('HDEL', hash, ARGV[i])
    redis.call('ZREM', expiry, ARGV[i])
  end
  return 0
end
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', ms)
for _, member in ipairs(gone) do redis.call('HDEL', hash, member) end
redis.call('ZREMRANGEBYSCORE', expiry, '-inf', ms)
return redis.call('HVALS', hash)
"""


def redis_keys(channel: str) -> tuple[str, str]:
    """The meta hash and history stream keys of `channel`."""
    return f"asgiws:{{{channel}}}:meta", f"asgiws:{{{channel}}}:history"


def _presence_keys(channel: str) -> tuple[str, str]:
    return f"asgiws:{{{channel}}}:presence", f"asgiws:{{{channel}}}:presence-expiry"


def encode_body(data: str | bytes) -> bytes:
    """The kind byte and the data, as stored and published."""
    return _TEXT + data.encode("utf-8") if isinstance(data, str) else _BINARY + bytes(data)


def decode_body(body: bytes) -> str | bytes | None:
    """The data of a stored or published body; None when it is not one asgiws wrote."""
    kind = body[:1]
    if kind == _TEXT:
        try:
            return body[1:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if kind == _BINARY:
        return body[1:]
    return None


class _Joining:
    """One subscription between its SUBSCRIBE and the end of its history read.

    (A class, not a bare list: joiners are found and removed by identity.)
    """

    __slots__ = ("collected",)

    def __init__(self) -> None:
        # What the channel delivered meanwhile, in order.
        self.collected: list[tuple[Offset, str | bytes]] = []


class _Channel:
    """What this worker knows of one watched channel."""

    __slots__ = ("buffer", "joining", "offset", "resume_task", "resuming", "skip")

    def __init__(self) -> None:
        # The last message delivered here (None: none seen yet).
        self.offset: Offset | None = None
        # While a gap is read from history, live messages wait here, in order.
        self.resuming = False
        self.buffer: list[tuple[Offset, str | bytes]] = []
        self.resume_task: asyncio.Task[None] | None = None
        # Subscriptions between SUBSCRIBE and the end of their history read:
        # they collect what is delivered meanwhile.
        self.joining: list[_Joining] = []
        # New subscribers whose history read reached further than this worker's
        # live delivery has: connection -> seq up to which they already have it.
        self.skip: dict[Subscriber, int] = {}


class RedisBroker(Broker):
    """History and delivery through Redis (see the module docstring), with reconnection."""

    def __init__(self, url: str, history_size: int, history_ttl: float) -> None:
        super().__init__(history_size, history_ttl)
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError:
            raise RuntimeError(
                "--broadcast-url redis:// needs the redis client: pip install 'asgiws[redis]'"
            ) from None
        self.url = url
        self._redis_error: type[Exception] = aioredis.RedisError
        self._connection_error: type[Exception] = RedisConnectionError
        # No client-side retries: publish() retries a dead connection once
        # itself (with a check that the first attempt did not land), and the
        # reader has its own backoff loop.
        # A bounded pool where calls wait their turn (up to the socket timeout):
        # 200 clients subscribing at once are 200 concurrent history reads, and
        # redis-py's default pool raises "Too many connections" past 100.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_SOCKET_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
        )
        self.client: Any = aioredis.Redis(connection_pool=pool)
        self._publish_script = self.client.register_script(PUBLISH_SCRIPT)
        self._read_script = self.client.register_script(READ_SCRIPT)
        self._presence_script = self.client.register_script(PRESENCE_SCRIPT)
        self.worker_id = f"{new_epoch()}.{os.getpid()}"
        self._ttl_ms = int(history_ttl * 1000)
        # The worker's own pub/sub channel: keeps the connection subscribed
        # (and so blocking on reads) while no app channel is watched.
        self._control = f"asgiws-worker:{self.worker_id}"
        self._channels: dict[str, _Channel] = {}
        self._pubsub: Any = None
        self._subscribed: set[str] = set()  # confirmed on the current pub/sub connection
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._pubsub_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._delay = RECONNECT_MIN_DELAY
        self.connected = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the first connection succeeded or failed

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_forever())
        self._refresher = loop.create_task(self._refresh_presence_forever())

    async def stop(self) -> None:
        """Stop reading; take this worker's presence entries out of Redis (bounded); close the client."""
        resumes = [state.resume_task for state in self._channels.values() if state.resume_task is not None]
        for task in (self._reader, self._refresher, *resumes):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # The connections closed by the shutdown left their presence entries:
        # let those removals finish, so that a worker that stops cleanly takes
        # its entries with it at once rather than PRESENCE_TTL later.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=REDIS_SOCKET_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._remove_all_presence(), REDIS_SOCKET_TIMEOUT)
        with contextlib.suppress(Exception):
            await self.client.aclose(close_connection_pool=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unavailable(self, what: str, exc: BaseException) -> BroadcastUnavailable:
        return BroadcastUnavailable(f"could not {what} through Redis at {_safe_url(self.url)}: {exc}")

    # -- publish and history ----------------------------------------------------------------

    async def publish(self, channel: str, data: str | bytes) -> str:
        """Store `data` in the channel's history and publish it; return its offset once Redis has it.

        A connection found dead (Redis restarted since it was pooled) is
        retried once on a fresh one. Raises BroadcastUnavailable otherwise.
        """
        args: list[Any] = [CHANNEL_PREFIX + channel, encode_body(data), new_epoch(), self.history_size,
                           self._ttl_ms, META_TTL * 1000, os.urandom(6).hex(), 0, _now_ms()]
        keys = redis_keys(channel)
        for attempt in (0, 1):
            try:
                offset: bytes = await self._publish_script(keys=keys, args=args)
                return offset.decode("ascii")
            except self._connection_error as exc:
                if attempt:
                    raise self._unavailable(f"publish to {channel!r}", exc) from exc
                args[7] = 1
            except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
                raise self._unavailable(f"publish to {channel!r}", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _read(self, channel: str, mode: str, since: Offset | None,
                    limit: int) -> tuple[Offset, bool, list[tuple[Offset, str | bytes]]]:
        """One READ_SCRIPT call. Raises BroadcastUnavailable."""
        args: list[Any] = [mode, since.epoch if since else "", since.stream_id if since else "0-0",
                since.seq if since else 0, limit, self._ttl_ms, new_epoch(), META_TTL * 1000, _now_ms()]
        try:
            reply = await self._read_script(keys=redis_keys(channel), args=args)
        except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
            raise self._unavailable(f"read the history of {channel!r}", exc) from exc
        latest = parse_offset(reply[0])
        assert latest is not None, reply[0]
        entries: list[tuple[Offset, str | bytes]] = []
        for i in range(2, len(reply), 2):
            offset = parse_offset(latest.epoch.encode() + b":" + reply[i])
            data = decode_body(reply[i + 1])
            if offset is not None and data is not None:
                entries.append((offset, data))
        return latest, bool(reply[1]), entries

    async def _read_after(self, channel: str,
                          since: Offset) -> tuple[Offset, bool, list[tuple[Offset, str | bytes]]]:
        """Every entry after `since`, page by page. Raises BroadcastUnavailable."""
        latest, covered, entries = await self._read(channel, "after", since, READ_PAGE)
        page = entries
        while len(page) == READ_PAGE:
            _, _, page = await self._read(channel, "after", page[-1][0], READ_PAGE)
            entries.extend(page)
        if entries:
            latest = max(latest, entries[-1][0], key=lambda offset: offset.seq)
        return latest, covered, entries

    async def history(self, channel: str, since: str | None = None, limit: int = 100) -> History:
        limit = max(0, min(limit, MAX_HISTORY_LIMIT))
        if not limit:
            return []
        since_offset = parse_offset(since)
        if since_offset is None:
            _, _, entries = await self._read(channel, "latest", None, limit)
        else:
            _, _, entries = await self._read(channel, "after", since_offset, limit)
        return [(str(offset), data) for offset, data in entries]

    # -- subscribe ----------------------------------------------------------------------------

    async def subscribe(self, connection: Subscriber, channel: str, since: str | None = None,
                        envelope: bool = False, presence: Any = None) -> Subscription:
        """SUBSCRIBE (once per worker and channel), read what followed `since`, then deliver live.

        Raises BroadcastUnavailable when Redis cannot be reached (nothing was
        subscribed then), TypeError when `presence` is not JSON-able.
        """
        info_json = None if presence is None else presence_json(presence)
        since_offset = parse_offset(since)
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        joining = _Joining()
        state.joining.append(joining)
        try:
            await self._watch(channel)
            if since_offset is not None:
                latest, recovered, entries = await self._read_after(channel, since_offset)
            else:
                latest, recovered, entries = (await self._read(channel, "latest", None, 0))[0], False, []
            if info_json is not None:
                await self._presence_call(channel, "add", self._member(connection), info_json)
        except BaseException:
            state.joining.remove(joining)
            self._unwatch_if_idle(channel)
            raise
        state.joining.remove(joining)
        if not recovered:
            entries = []
        # What arrived live during the read and is not in it; ordered, no gap
        # (the channel's own gap handling sees to that).
        later = [(offset, data) for offset, data in joining.collected
                 if offset.epoch != latest.epoch or offset.seq > latest.seq]
        if state.offset is None or state.offset.epoch != latest.epoch:
            if state.offset is None:
                state.offset = latest
        elif state.offset.seq < latest.seq:
            # Messages up to latest are still on their way here through pub/sub
            # (or in a gap being read): this subscriber has them already.
            state.skip[connection] = latest.seq
        replay = [(str(offset), data) for offset, data in entries + later]
        if replay:
            self.hub.replay(connection, channel, replay, envelope)
        self.hub.subscribe(connection, channel, envelope)
        if info_json is not None:
            self._add_local_presence(connection, channel, info_json)
        return Subscription(channel, str(latest), recovered, len(entries))

    async def _watch(self, channel: str) -> None:
        """SUBSCRIBE to `channel` on the current pub/sub connection and wait for Redis to confirm it.

        Raises BroadcastUnavailable when not connected, or no confirmation comes in time.
        """
        if channel in self._subscribed:
            return
        if not self._first_attempt.is_set():
            # Start-up: the first connection is still being made; a subscriber
            # that came in first waits for it (bounded), later ones fail fast.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), REDIS_SOCKET_TIMEOUT)
        pubsub = self._pubsub
        if pubsub is None or not self.connected.is_set():
            raise BroadcastUnavailable(f"could not subscribe to {channel!r}: not connected to Redis at "
                                       f"{_safe_url(self.url)} (reconnecting)")
        future = self._confirmations.get(channel)
        if future is None:
            future = self._confirmations[channel] = asyncio.get_running_loop().create_future()
            try:
                async with self._pubsub_lock:
                    await pubsub.subscribe(CHANNEL_PREFIX + channel)
            except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
                self._confirmations.pop(channel, None)
                raise self._unavailable(f"subscribe to {channel!r}", exc) from exc
        try:
            await asyncio.wait_for(asyncio.shield(future), REDIS_SOCKET_TIMEOUT)
        except asyncio.TimeoutError as exc:
            raise self._unavailable(f"subscribe to {channel!r}", exc) from exc

    def _unwatch_if_idle(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None or state.joining or self.hub.subscribers(channel):
            return
        del self._channels[channel]
        if state.resume_task is not None:
            state.resume_task.cancel()
        if channel in self._subscribed:
            self._subscribed.discard(channel)
            self._spawn(self._unsubscribe(channel))

    async def _unsubscribe(self, channel: str) -> None:
        pubsub = self._pubsub
        async with self._pubsub_lock:
            # Watched again meanwhile: its SUBSCRIBE went out after we decided.
            if channel in self._channels or pubsub is None or pubsub is not self._pubsub:
                return
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(CHANNEL_PREFIX + channel)

    def _on_leave(self, connection: Subscriber, channel: str) -> None:
        super()._on_leave(connection, channel)
        state = self._channels.get(channel)
        if state is not None:
            state.skip.pop(connection, None)
        self._unwatch_if_idle(channel)

    # -- the pub/sub connection -------------------------------------------------------------

    async def _read_forever(self) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                async with self._pubsub_lock:
                    await pubsub.subscribe(self._control)
                    self._pubsub = pubsub
                    if self._channels:
                        await pubsub.subscribe(*(CHANNEL_PREFIX + channel for channel in self._channels))
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            # Broad on purpose: whatever Redis, the socket or the client library
            # raises, the reader logs, backs off and reconnects; it must not die.
            except Exception as exc:  # noqa: BLE001
                if self.connected.is_set():
                    logger.warning("Broadcast: lost Redis at %s (%s); reconnecting", _safe_url(self.url), exc)
                else:
                    logger.warning("Broadcast: Redis at %s unavailable (%s); retrying in %.1fs",
                                   _safe_url(self.url), exc, self._delay)
            finally:
                self._first_attempt.set()
                self._disconnected(pubsub)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, RECONNECT_MAX_DELAY)

    def _disconnected(self, pubsub: Any) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        self.connected.clear()
        self._subscribed.clear()
        confirmations, self._confirmations = self._confirmations, {}
        for future in confirmations.values():
            if not future.done():
                future.set_exception(BroadcastUnavailable(f"lost Redis at {_safe_url(self.url)}"))
                future.exception()  # retrieved: whoever waits gets it, nobody else need

    async def _pump(self, pubsub: Any) -> None:
        on_message = self._on_message
        cut = len(CHANNEL_PREFIX)
        while True:
            # timeout=None: block until a message; a dead socket raises.
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            name = message["channel"]
            name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
            if kind == "message":
                on_message(name[cut:], message["data"])
            elif kind == "subscribe":
                self._on_subscribed(name)

    def _on_subscribed(self, name: str) -> None:
        if name == self._control:
            self.connected.set()
            self._first_attempt.set()
            self._delay = RECONNECT_MIN_DELAY
            logger.info("Broadcast: connected to Redis at %s", _safe_url(self.url))
            return
        channel = name[len(CHANNEL_PREFIX):]
        state = self._channels.get(channel)
        if state is None:
            return
        self._subscribed.add(channel)
        future = self._confirmations.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)
        if state.offset is not None:
            # Subscribed again after a reconnect: read what was published while away.
            self._start_resume(channel, state)

    # -- delivery ------------------------------------------------------------------------------

    def _on_message(self, channel: str, raw: bytes) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        space = raw.find(b" ")
        offset = parse_offset(raw[:space]) if space > 0 else None
        data = decode_body(raw[space + 1:]) if offset is not None else None
        if offset is None or data is None:
            logger.warning("Broadcast: dropped a message on %r that asgiws did not publish "
                           "(expected OFFSET SP KIND DATA, see PUBLISH_SCRIPT)", channel)
            return
        if state.resuming:
            state.buffer.append((offset, data))
            return
        self._accept(channel, state, offset, data)

    def _accept(self, channel: str, state: _Channel, offset: Offset, data: str | bytes) -> None:
        """Deliver the message at `offset` if it is the channel's next; read a gap first; drop a repeat."""
        last = state.offset
        if last is not None:
            if offset.epoch == last.epoch:
                if offset.seq <= last.seq:
                    return  # delivered already (from history)
                if offset.seq != last.seq + 1:
                    state.buffer.append((offset, data))
                    self._start_resume(channel, state)
                    return
            else:
                logger.warning(
                    "Broadcast: channel %r has a new history epoch (Redis lost its data: restarted "
                    "without persistence, or flushed); messages published before may not have reached "
                    "this worker's clients", channel)
                state.skip.clear()
                state.offset = Offset(offset.epoch, 0, 0)
                if offset.seq != 1:
                    state.buffer.append((offset, data))
                    self._start_resume(channel, state)
                    return
        state.offset = offset
        for joining in state.joining:
            joining.collected.append((offset, data))
        if state.skip:
            skip = state.skip
            self.hub.deliver(channel, data, str(offset), {c for c, seq in skip.items() if offset.seq <= seq})
            state.skip = {c: seq for c, seq in skip.items() if seq > offset.seq}
        else:
            self.hub.deliver(channel, data, str(offset))

    def _start_resume(self, channel: str, state: _Channel) -> None:
        state.resuming = True
        if state.resume_task is None or state.resume_task.done():
            state.resume_task = asyncio.get_running_loop().create_task(self._resume(channel, state))

    async def _resume(self, channel: str, state: _Channel) -> None:
        """Read from history what followed the last delivered message, deliver it, then what waited."""
        while self._channels.get(channel) is state:
            try:
                if await self._resume_once(channel, state):
                    return
            except asyncio.CancelledError:
                raise
            # Broad on purpose, as the reader's: while resuming, live messages wait in the buffer, so a
            # resume that died would leave this worker's subscribers of the channel waiting for ever.
            except Exception as exc:
                logger.error("Broadcast: resuming %r failed; retrying", channel, exc_info=exc)
                await asyncio.sleep(RECONNECT_MIN_DELAY)

    async def _resume_once(self, channel: str, state: _Channel) -> bool:
        """One read of the history after `state.offset` and its delivery; True when done (or left to
        the reconnect), False to read again."""
        since = state.offset
        assert since is not None
        while True:
            try:
                latest, covered, entries = await self._read_after(channel, since)
                break
            except BroadcastUnavailable as exc:
                if not self.connected.is_set():
                    return True  # the reconnect resumes every watched channel
                logger.warning("Broadcast: could not read the history of %r (%s); retrying", channel, exc)
                await asyncio.sleep(RECONNECT_MIN_DELAY)
                if self._channels.get(channel) is not state:
                    return True
        if not covered:
            if latest.epoch != since.epoch and (not entries or entries[0][0].seq == 1):
                logger.warning(
                    "Broadcast: channel %r has a new history epoch (Redis lost its data); "
                    "delivering the new history from its start", channel)
                state.offset = Offset(latest.epoch, 0, 0)
            else:
                # Never silently wrong: the subscribers here would go on with a hole in what they got.
                closed = self.hub.close_subscribers(channel, CloseCode.SERVICE_RESTART, GAP_CLOSE_REASON)
                logger.warning(
                    "Broadcast: this worker missed messages of %r: history no longer covers %s (latest "
                    "%s); closed its %d subscriber(s) with 1012 to resume from their own offsets; raise "
                    "--broadcast-history-size/-ttl", channel, since, latest, closed)
                state.offset = latest
                entries = []
            state.skip.clear()
        for offset, data in entries:
            self._accept(channel, state, offset, data)
        # Then what arrived live meanwhile, in order; a gap among it reads again.
        state.resuming = False
        buffer, state.buffer = state.buffer, []
        for i, (offset, data) in enumerate(buffer):
            self._accept(channel, state, offset, data)
            if state.resuming:
                state.buffer.extend(buffer[i + 1:])
                break
        return not state.resuming

    # -- presence ------------------------------------------------------------------------------

    def _member(self, connection: Subscriber) -> str:
        return f"{self.worker_id}:{id(connection):x}"

    async def _presence_call(self, channel: str, op: str, *members: str) -> Any:
        try:
            return await self._presence_script(keys=_presence_keys(channel),
                                               args=[op, int(PRESENCE_TTL * 1000), _now_ms(), *members])
        except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
            raise self._unavailable(f"update the presence of {channel!r}", exc) from exc

    async def presence(self, channel: str) -> list[Any]:
        """Every live subscriber's presence info on `channel`, from every worker.

        Raises BroadcastUnavailable.
        """
        infos = await self._presence_call(channel, "get")
        return [json.loads(info) for info in infos]

    def _presence_left(self, connection: Subscriber, channel: str) -> None:
        self._spawn(self._remove_presence(channel, self._member(connection)))

    async def _remove_presence(self, channel: str, member: str) -> None:
        try:
            await self._presence_call(channel, "remove", member)
        except BroadcastUnavailable as exc:
            logger.info("Broadcast: presence entry on %r left to expire (%s)", channel, exc)

    async def _remove_all_presence(self) -> None:
        for channel, entries in list(self.local_presence.items()):
            await self._presence_call(channel, "remove", *(self._member(c) for c in entries))

    async def _refresh_presence_forever(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH_INTERVAL)
            for channel, entries in list(self.local_presence.items()):
                pairs = [item for connection, info in entries.items()
                         for item in (self._member(connection), info)]
                try:
                    await self._presence_call(channel, "add", *pairs)
                except BroadcastUnavailable:
                    break  # Redis is away; the next round tries again


def _now_ms() -> int:
    return int(time.time() * 1000)


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
