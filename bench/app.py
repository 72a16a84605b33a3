"""The one ASGI app every server in the benchmark runs.

Routes
  WS   /echo          echo every message back (text as text, bytes as bytes)
  WS   /fanout        subscriber; the publisher's task sends to it directly
  WS   /fanout_queue  subscriber with its own task, fed by an asyncio.Queue
  WS   /fanout_broadcast  subscriber of the asgiws.broadcast channel "fanout" (asgiws only)
  WS   /publish       control socket: each message received is sent to every subscriber
  WS   /publish_floor control socket for /fanout's subscribers with the server's send taken out
                      (asgiws only): the app's own work per subscriber, then the frame written
                      straight to the transport; the floor of any ASGI server on this app
  WS   /broadcast     subscriber to the channel "all" through asgiws.broadcast (asgiws only), and
                      to /publish's send loop as /fanout is
  WS   /broadcast_publish  control socket: each message received is published on "all" with
                      asgiws.broadcast (reaches every worker; through Redis with --broadcast-url)
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
# /fanout_broadcast: the server-side path, asgiws.broadcast: the server frames a
#   publish once and writes it to every subscriber, no app task per subscriber.
_broadcast = {"subscribers": 0, "hub": None}


def _publish(message):
    for q in _queues:
        q.put_nowait(message)
    return len(_queues) + len(_direct_sends)


def _send_event(message):
    """The websocket.send event for a str (text frame) or bytes (binary frame)."""
    key = "bytes" if isinstance(message, bytes) else "text"
    return {"type": "websocket.send", key: message}


async def _publish_direct(message):
    for send in list(_direct_sends):
        try:
            await send(_send_event(message))
        except Exception:  # that subscriber is gone; the others still get it
            _direct_sends.discard(send)


async def _server_free(event):
    """What is left of an ASGI `send` with the server's part taken out: a coroutine to await."""


async def _publish_floor(message):
    """_publish_direct's loop, each `await send(event)` replaced by the least any server could do.

    The app's part stays (an event dict per subscriber, an awaited coroutine), and the server's
    part is only what picows does too: frame the text (asgiws's C helper) and write it to the
    subscriber's transport. asgiws internals (the send callable's protocol): a measurement only.
    """
    from asgiws.websocket.fastpath import small_text_frame

    for send in list(_direct_sends):
        event = _send_event(message)
        await _server_free(event)
        text = event.get("text")
        frame = None if text is None else small_text_frame(text)
        if frame is None:  # bytes, or text over 125 bytes: not what the floor measures
            await send(event)
        else:
            send.__self__.transport.write(frame)


async def _accept(receive, send):
    """Complete the handshake; False if the client left first."""
    if (await receive())["type"] != "websocket.connect":
        return False
    await send({"type": "websocket.accept"})
    return True


async def _ws_echo(receive, send):
    if not await _accept(receive, send):
        return
    while True:
        msg = await receive()
        if msg["type"] == "websocket.receive":
            data = msg.get("bytes")
            await send(_send_event(data if data is not None else msg.get("text")))
        elif msg["type"] == "websocket.disconnect":
            return


async def _ws_fanout(receive, send):
    if not await _accept(receive, send):
        return
    _direct_sends.add(send)
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        _direct_sends.discard(send)


async def _ws_fanout_broadcast(scope, receive, send):
    from asgiws.broadcast import Broadcast  # asgiws only: the other servers never get this path

    if not await _accept(receive, send):
        return
    hub = _broadcast["hub"] = Broadcast.from_scope(scope)
    await hub.subscribe(scope, "fanout")
    _broadcast["subscribers"] += 1
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        _broadcast["subscribers"] -= 1


async def _ws_fanout_queue(receive, send):
    if not await _accept(receive, send):
        return
    q = asyncio.Queue()
    _queues.add(q)

    async def watch():
        while (await receive())["type"] != "websocket.disconnect":
            pass
        q.put_nowait(None)

    watcher = asyncio.ensure_future(watch())
    try:
        while (item := await q.get()) is not None:
            await send(_send_event(item))
    finally:
        watcher.cancel()
        _queues.discard(q)


async def _ws_publish(receive, send, floor=False):
    """Each message received goes to every subscriber (with `floor`: to /fanout's, by _publish_floor)."""
    if not await _accept(receive, send):
        return
    while True:
        msg = await receive()
        if msg["type"] == "websocket.receive":
            data = msg.get("bytes")
            message = data if data is not None else msg.get("text")
            if floor:
                await _publish_floor(message)
                continue
            _publish(message)
            await _publish_direct(message)
            if _broadcast["subscribers"]:
                await _broadcast["hub"].publish("fanout", message)
        elif msg["type"] == "websocket.disconnect":
            return


async def _ws_broadcast(receive, send, scope, publisher):
    """asgiws.broadcast: the server writes one prepared frame to every subscriber, no task each."""
    from asgiws.broadcast import Broadcast

    if not await _accept(receive, send):
        return
    hub = Broadcast.from_scope(scope)
    if not publisher:
        await hub.subscribe(scope, "all")
        _direct_sends.add(send)  # /publish's send loop reaches it too: one set of subscribers, two paths
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            _direct_sends.discard(send)
            return
        if publisher:
            data = msg.get("bytes")
            await hub.publish("all", data if data is not None else msg.get("text"))


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
        if path == "/fanout_broadcast":
            return await _ws_fanout_broadcast(scope, receive, send)
        if path in ("/publish", "/publish_floor"):
            return await _ws_publish(receive, send, floor=path == "/publish_floor")
        if path in ("/broadcast", "/broadcast_publish"):
            return await _ws_broadcast(receive, send, scope, path == "/broadcast_publish")
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
