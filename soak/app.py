"""The soak test's server app: a WebSocket echo and GET /debug with the
process's counts (RSS, open fds, asyncio tasks, open sockets). The counts live
here, in the app, not in the server. GET /debug?trim=1 reads RSS after
malloc_trim: what live objects hold, without the allocator's free pages."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os

live = 0


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _trimmed_rss() -> int:
    """RSS once glibc has handed its free pages back (malloc_trim); plain RSS elsewhere.

    Freed memory that the allocator keeps for reuse counts in RSS but is not
    held by anything: this figure is what live objects really occupy.
    """
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    return _rss()


def counts(trim: bool = False) -> dict[str, int]:
    return {
        "rss": _trimmed_rss() if trim else _rss(),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "websockets": live,
    }


async def app(scope, receive, send):
    global live
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        body = json.dumps(counts(trim=scope["query_string"] == b"trim=1")).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()
    await send({"type": "websocket.accept"})
    live += 1
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message["text"]})
    finally:
        live -= 1
