"""A WebSocket client of tests/broadcast/apps.py's /resume/{channel}: remembers the last offset it saw."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class Resumer:
    """One subscriber: connect (with its last offset), read envelopes, reconnect.

    `messages` holds the data of every envelope received, in order, across
    reconnects; `offset` the last offset seen (the one to resume from).
    """

    def __init__(self, base_url: str, channel: str, name: str | None = None) -> None:
        self.base_url = base_url
        self.channel = channel
        self.name = name
        self.offset: str | None = None
        self.messages: list[Any] = []
        self.starts: list[dict[str, Any]] = []  # the first frame of each connection
        self.ws: ClientConnection | None = None

    def url(self, base_url: str | None = None) -> str:
        query = {}
        if self.offset is not None:
            query["since"] = self.offset
        if self.name is not None:
            query["name"] = self.name
        base = base_url or self.base_url
        return f"{base}/resume/{self.channel}" + ("?" + urllib.parse.urlencode(query) if query else "")

    async def connect(self, base_url: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        self.ws = await asyncio.wait_for(connect(self.url(base_url), max_size=None), timeout)
        start = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if self.offset is None:
            self.offset = start["offset"]
        self.starts.append(start)
        return start

    def take(self, frame: str | bytes) -> Any:
        envelope = json.loads(frame)
        assert envelope["channel"] == self.channel, envelope
        self.offset = envelope["offset"]
        data = envelope["data"] if "data" in envelope else base64.b64decode(envelope["data_base64"])
        self.messages.append(data)
        return data

    async def receive(self, timeout: float = 10.0) -> Any:
        assert self.ws is not None
        return self.take(await asyncio.wait_for(self.ws.recv(), timeout))

    async def receive_until(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` messages in all. Raises TimeoutError with what arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout}s")
            await self.receive(left)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
