"""The one ASGI app every server in the benchmark runs.

Routes
  WS   /echo          echo every message back (text as text, bytes as bytes)
  WS   /fanout        subscriber; the publisher's task sends to it directly
  WS   /fanout_queue  subscriber with its own task, fed by an asyncio.Queue
  WS   /publish       control socket: each message received is sent to every subscriber
  GET  /              "Hello, world!"
  POST /echo          the request body back
  POST /publish       the body is published to every subscriber (HTTP alternative)
"""
import asyncio

# Two subscriber shapes, both common in real apps; a publish reaches both sets.
# /fanout: the publisher's own task loops over the subscribers' send callables
#   (FastAPI's documented ConnectionManager.broadcast does this).
# /fanout_queue: every subscriber has its own task waiting on an asyncio.Queue.
_direct_sends = set()  # the ASGI send callable of each /fanout connection
_queues = set()  # one asyncio.Queue per /fanout_queue connection


def _publish(message):
    for q in _queues:
        q.put_nowait(message)
    return len(_queues) + len(_direct_sends)


async def _publish_direct(message):
    key = "bytes" if isinstance(message, bytes) else "text"
    for send in list(_direct_sends):
        try:
            await send({"type": "websocket.send", key: message})
        except Exception:  # that subscriber is gone; the others still get it
            _direct_sends.discard(send)


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
    await send({"type": "websocket.accept"})
    _direct_sends.add(send)
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        _direct_sends.discard(send)


async def _ws_fanout_queue(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    q = asyncio.Queue()
    _queues.add(q)  # registered before the handshake completes
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
        _queues.discard(q)


async def _ws_publish(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.receive":
            data = msg.get("bytes")
            message = data if data is not None else msg.get("text")
            _publish(message)
            await _publish_direct(message)
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
        if path == "/fanout_queue":
            return await _ws_fanout_queue(receive, send)
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
                await _publish_direct(body)
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
