"""A plain ASGI app: `asgiws examples.hello:app`.

GET any path: "Hello, world!". A WebSocket on any path (e.g. /ws): every
message is echoed back with its type (text -> text, bytes -> bytes). The
Autobahn conformance suite and the tests use this same echo.
"""

from __future__ import annotations

from typing import Any

Receive = Any
Send = Any


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await HANDLERS[scope["type"]](receive, send)


async def hello(receive: Receive, send: Send) -> None:
    body = b"Hello, world!\n"
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))],
    })
    await send({"type": "http.response.body", "body": body})


async def websocket_echo(receive: Receive, send: Send) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


HANDLERS = {"http": hello, "websocket": websocket_echo, "lifespan": lifespan}
