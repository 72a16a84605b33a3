"""The app the metrics tests serve, in worker processes (an import string)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asgiws.broadcast import Broadcast


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: / answers 200 with the worker's pid, /missing 404, /boom raises (500).
    WebSocket: /deny is refused by the app, /close/CODE is closed by the app with CODE after
    accepting, /flood sends 16 x 512 KiB at once (to a client that does not read), /room subscribes to broadcast channel "room" and publishes what it receives;
    anything else echoes."""
    if scope["type"] == "http":
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("boom")
        status = 404 if path == "/missing" else 200
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()
        path = scope["path"]
        if path == "/deny":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        if path.startswith("/close/"):
            await send({"type": "websocket.close", "code": int(path.rsplit("/", 1)[1])})
            return
        if path == "/flood":
            big = b"x" * (512 * 1024)
            sends = [asyncio.ensure_future(send({"type": "websocket.send", "bytes": big})) for _ in range(16)]
            await asyncio.gather(*sends, return_exceptions=True)
            await receive()
            return
        if path == "/room":
            await Broadcast.from_scope(scope).subscribe(scope, "room")
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if path == "/room":
                await Broadcast.from_scope(scope).publish("room", message.get("text") or "")
            else:
                await send({"type": "websocket.send", "text": message.get("text"),
                            "bytes": message.get("bytes")})
