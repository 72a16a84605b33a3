"""Brokers: how a published message reaches every worker's hub.

`MemoryBroker` (the default) hands messages to this worker's hub directly.
`RedisBroker` publishes through Redis pub/sub and delivers what it reads back,
so every worker (and machine) subscribed to the same Redis sees every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asgiws.broadcast.errors import BroadcastUnavailable
from asgiws.broadcast.hub import Hub

__all__ = ["Broker", "MemoryBroker", "RedisBroker", "create_broker"]

logger = logging.getLogger("asgiws.error")

# Redis channel names are "asgiws:" + the app's channel, so that one Redis can
# carry other traffic; payloads are one kind byte + the data.
CHANNEL_PREFIX = "asgiws:"
_TEXT, _BINARY = b"t", b"b"

# Reconnect backoff, in seconds: doubles from the first to the cap. The cap
# bounds how long a worker stays deaf after Redis comes back.
RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
# A publish waits this many seconds for Redis before failing (BroadcastUnavailable).
REDIS_SOCKET_TIMEOUT = 2.0


class Broker:
    """Base: owns the worker's Hub; subclasses move messages between workers."""

    def __init__(self) -> None:
        self.hub = Hub()

    async def start(self) -> None:
        """Begin delivering; must not fail when the backend is down (it reconnects)."""

    async def stop(self) -> None:
        """Stop delivering and release connections."""

    async def publish(self, channel: str, data: str | bytes) -> None:
        raise NotImplementedError


class MemoryBroker(Broker):
    """In-process: reaches the subscribers of this worker only."""

    async def publish(self, channel: str, data: str | bytes) -> None:
        self.hub.deliver(channel, data)


class RedisBroker(Broker):
    """Redis pub/sub (PUBLISH, PSUBSCRIBE asgiws:*), with reconnection.

    Every worker reads every asgiws message and delivers those with local
    subscribers: one pattern subscription survives reconnects with nothing
    to replay, at the cost of messages for channels no local client watches.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise RuntimeError(
                "--broadcast-url redis:// needs the redis client: pip install 'asgiws[redis]'"
            ) from None
        self.url = url
        self._redis_error: type[Exception] = aioredis.RedisError
        # No client-side retries: a publish fails fast and the app decides;
        # the reader has its own backoff loop.
        self.client: Any = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
        )
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def publish(self, channel: str, data: str | bytes) -> None:
        payload = _TEXT + data.encode("utf-8") if isinstance(data, str) else _BINARY + bytes(data)
        try:
            await self.client.publish(CHANNEL_PREFIX + channel, payload)
        except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
            raise BroadcastUnavailable(f"could not publish to {channel!r} through Redis: {exc}") from exc

    async def _read_forever(self) -> None:
        delay = RECONNECT_MIN_DELAY
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self.connected.set()
                logger.info("Broadcast: subscribed to Redis at %s", _safe_url(self.url))
                delay = RECONNECT_MIN_DELAY
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
                                   _safe_url(self.url), exc, delay)
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _pump(self, pubsub: Any) -> None:
        deliver = self.hub.deliver
        cut = len(CHANNEL_PREFIX)
        while True:
            # timeout=None: block until a message; a dead socket raises.
            message = await pubsub.get_message(timeout=None)
            if message is None or message["type"] != "pmessage":
                continue
            channel = message["channel"]
            channel = (channel.decode("utf-8") if isinstance(channel, bytes) else channel)[cut:]
            raw: bytes = message["data"]
            if raw[:1] == _TEXT:
                try:
                    deliver(channel, raw[1:].decode("utf-8"))
                except UnicodeDecodeError:
                    logger.warning("Broadcast: dropped a text message on %r that is not UTF-8", channel)
            else:
                deliver(channel, raw[1:])


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def create_broker(url: str | None) -> Broker:
    """The broker for --broadcast-url (None: in-process). Raises ValueError for an unknown scheme."""
    if url is None:
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBroker(url)
    raise ValueError(f"broadcast_url: unsupported scheme in {url!r} (expected redis:// or rediss://)")
