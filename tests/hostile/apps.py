"""Small ASGI apps for the hostile tests (subprocess servers load them by import string)."""

from __future__ import annotations

from examples.hello import websocket_echo


async def hello(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await ws_sink(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def ws_sink(scope, receive, send):
    """Accept, then read everything; never send (the ping-flood and slow-reader target)."""
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def ws_echo(scope, receive, send):
    """The echo loop of examples/hello.py, for in-thread servers."""
    await websocket_echo(receive, send)
