"""The one ASGI app every server in the benchmark runs.

Routes
  WS   /echo     echo every message back (text as text, bytes as bytes)
  WS   /fanout   subscriber: receives every message published
  WS   /publish  control socket: each message received is sent to every /fanout subscriber
  GET  /         "Hello, world!"
  POST /echo     the request body back
  POST /publish  the body is published to every /fanout subscriber (HTTP alternative)
"""
import asyncio

_subscribers = set()  # one asyncio.Queue per /fanout connection


def _publish(message):
    for q in _subscribers:
        q.put_nowait(message)
    return len(_subscribers)


async def _ws_echo(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.receive":
            if msg.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
            else:
                await send({"type": "websocket.send", "text": msg.get("text")})
        elif msg["type"] == "websocket.disconnect":
            return


async def _ws_fanout(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    q = asyncio.Queue()
    _subscribers.add(q)  # registered before the handshake completes
    try:
        await send({"type": "websocket.accept"})

        async def watch():
            while True:
                m = await receive()
                if m["type"] == "websocket.disconnect":
                    q.put_nowait(None)
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                if isinstance(item, bytes):
                    await send({"type": "websocket.send", "bytes": item})
                else:
                    await send({"type": "websocket.send", "text": item})
        finally:
            watcher.cancel()
    finally:
        _subscribers.discard(q)


async def _ws_publish(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.receive":
            data = msg.get("bytes")
            _publish(data if data is not None else msg.get("text"))
        elif msg["type"] == "websocket.disconnect":
            return


async def _read_body(receive):
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.request":
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                return b"".join(chunks)
        elif msg["type"] == "http.disconnect":
            return None


async def _respond(send, status, body, ctype=b"text/plain"):
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    kind = scope["type"]
    path = scope["path"]
    if kind == "websocket":
        if path == "/fanout":
            return await _ws_fanout(receive, send)
        if path == "/publish":
            return await _ws_publish(receive, send)
        return await _ws_echo(receive, send)
    if kind == "http":
        method = scope["method"]
        if method == "GET":
            return await _respond(send, 200, b"Hello, world!")
        if method == "POST":
            body = await _read_body(receive)
            if body is None:
                return
            if path == "/publish":
                n = _publish(body)
                return await _respond(send, 200, str(n).encode())
            return await _respond(send, 200, body, b"application/octet-stream")
        return await _respond(send, 405, b"")
    if kind == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
