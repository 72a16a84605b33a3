"""Apps served by the supervisor tests, in worker processes (import strings)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


async def _text(send: Any, body: bytes, status: int = 200) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
    })
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET /: this worker's pid. GET /block: blocks the event loop. WebSocket: echo."""
    if scope["type"] == "http":
        if scope["path"] == "/block":
            time.sleep(60)  # noqa: ASYNC251 - what a careless app does: the whole loop stops
        await _text(send, str(os.getpid()).encode())
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or str(os.getpid())})
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Imports fine, then fails its lifespan start-up every time."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at db:5432"})


async def gated_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`app`, except that start-up fails while the file $ASGIWS_TEST_BROKEN exists (a bad deploy)."""
    if scope["type"] == "lifespan" and os.path.exists(os.environ["ASGIWS_TEST_BROKEN"]):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "bad deploy: config missing"})
        return
    await app(scope, receive, send)


# Memory /grow holds on to, per request, so that the worker's RSS passes --limit-max-memory.
_held: list[bytes] = []
# time.monotonic() of each websocket.disconnect the server gave drain_app: asgiws gives it when it sends
# its close frame, so these are the server's close times, whatever delays the clients' reading.
_disconnects: list[float] = []


def _write_disconnects() -> None:
    """At lifespan shutdown: the disconnect times, then the shutdown's own, into $ASGIWS_TEST_CLOSES/<pid>."""
    where = os.environ.get("ASGIWS_TEST_CLOSES")
    if where:
        lines = [f"close {moment!r}" for moment in _disconnects] + [f"shutdown {time.monotonic()!r}"]
        with open(os.path.join(where, str(os.getpid())), "w") as out:
            out.write("\n".join(lines) + "\n")


async def drain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`app`, and what asgiws.drain tells an app.

    WebSocket: echo (an empty message answers the pid), and when the worker drains, one text message
    "draining <close code> <seconds left>" before the server closes. HTTP: GET /drain answers
    "<is_set> <close code>"; GET /grow holds 64 MiB more.
    """
    if scope["type"] == "websocket":
        drain = scope["extensions"]["asgiws.drain"]
        await receive()
        await send({"type": "websocket.accept"})

        async def tell() -> None:
            await drain.wait()
            text = f"draining {drain.close_code} {drain.seconds_left():.3f}"
            await send({"type": "websocket.send", "text": text})

        teller = asyncio.ensure_future(tell())
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code") in (1001, 1012):  # the server's closes, not a client's 1000
                        _disconnects.append(time.monotonic())
                    return
                await send({"type": "websocket.send", "text": message.get("text") or str(os.getpid())})
        finally:
            teller.cancel()
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        _write_disconnects()
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http" and scope["path"] == "/drain":
        drain = scope["extensions"]["asgiws.drain"]
        await _text(send, f"{drain.is_set()} {drain.close_code}".encode())
    elif scope["type"] == "http" and scope["path"] == "/grow":
        _held.append(b"x" * (64 * 1024 * 1024))  # written, so resident
        await _text(send, str(os.getpid()).encode())
    else:
        await app(scope, receive, send)
