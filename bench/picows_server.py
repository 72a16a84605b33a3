"""Bare picows server (no ASGI): the ceiling for the WebSocket scenarios.

Same WebSocket routes as bench/app.py: /echo (default), /fanout, /fanout_queue and
/fanout_broadcast (all plain subscribers here), /publish (and /publish_floor, the same).
And one that is not bare: /echo_floor runs bench/app.py's echo coroutine on picows's codec,
stepped straight from each frame, with no asyncio Task (see AsgiFloor).
"""
import argparse
import asyncio
import os
import ssl
import sys
import types

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.app import app as asgi_app  # noqa: E402  (the repository root is on the path only now)

subscribers = set()


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        t = frame.msg_type
        if t == WSMsgType.TEXT or t == WSMsgType.BINARY:
            transport.send(t, frame.get_payload_as_memoryview())
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif t == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())


@types.coroutine
def _receive():
    """The floor's ASGI receive: the driver sends the next event into the app's coroutine."""
    return (yield)


class AsgiFloor(WSListener):
    """/echo_floor: bench/app.py's /echo coroutine driven from picows's frame callbacks.

    The least an ASGI server on picows's codec could do per message: an event dict in, the
    app's coroutine resumed from the frame callback itself, its `websocket.send` written as a
    frame. No asyncio Task is there, which a real server must give the app (current_task() for
    anyio and sniffio, cancellation, its exceptions caught): so this is a floor under every
    ASGI server, not a server to run apps on.
    """

    def on_ws_connected(self, transport):
        self.transport = transport
        self.app = asgi_app({"type": "websocket", "path": "/echo"}, _receive, self._send)
        self._step(None)  # to the app's first receive()
        self._step({"type": "websocket.connect"})

    def _step(self, event):
        if self.app is None:
            return
        try:
            self.app.send(event)
        except StopIteration:
            self.app = None

    async def _send(self, event):
        kind = event["type"]
        if kind == "websocket.send":
            text = event.get("text")
            if text is not None:
                self.transport.send(WSMsgType.TEXT, text.encode())
            else:
                self.transport.send(WSMsgType.BINARY, event["bytes"])
        elif kind == "websocket.close":
            self.transport.send_close(event.get("code", 1000))
            self.transport.disconnect()

    def on_ws_frame(self, transport, frame):
        t = frame.msg_type
        if t == WSMsgType.TEXT:
            self._step({"type": "websocket.receive", "text": frame.get_payload_as_utf8_text()})
        elif t == WSMsgType.BINARY:
            self._step({"type": "websocket.receive", "bytes": frame.get_payload_as_bytes()})
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif t == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport):
        self._step({"type": "websocket.disconnect", "code": 1005})


class Sub(WSListener):
    def on_ws_connected(self, transport):
        self.transport = transport
        subscribers.add(transport)

    def on_ws_disconnected(self, transport):
        subscribers.discard(transport)

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Pub(WSListener):
    def on_ws_frame(self, transport, frame):
        t = frame.msg_type
        if t == WSMsgType.TEXT or t == WSMsgType.BINARY:
            data = frame.get_payload_as_bytes()
            for s in subscribers:
                s.send(t, data)
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def factory(request):
    if request.path in (b"/fanout", "/fanout", b"/fanout_queue", "/fanout_queue", b"/fanout_broadcast",
                        "/fanout_broadcast"):
        return Sub()
    if request.path in (b"/publish", "/publish", b"/publish_floor", "/publish_floor"):
        return Pub()  # /publish_floor: picows's own loop is the ceiling beside asgiws's floor
    if request.path in (b"/echo_floor", "/echo_floor"):
        return AsgiFloor()
    return Echo()


async def main(host, port, ssl_context=None):
    server = await ws_create_server(factory, host, port, max_frame_size=64 * 1024 * 1024, ssl=ssl_context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--certfile", help="serve wss with this certificate (PEM) and --keyfile")
    p.add_argument("--keyfile")
    a = p.parse_args()
    context = None
    if a.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(a.certfile, a.keyfile)
    uvloop.run(main(a.host, a.port, context))
