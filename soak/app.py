"""The soak test's server app: a WebSocket echo and GET /debug with the
process's counts (RSS, open fds, asyncio tasks, open sockets). The counts live
here, in the app, not in the server."""

from __future__ import annotations

import asyncio
import json
import os

live = 0


def counts() -> dict[str, int]:
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    return {
        "rss": rss,
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
        body = json.dumps(counts()).encode()
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
