"""Bare picows server (no ASGI): the ceiling for the WebSocket scenarios.

Same WebSocket routes as bench/app.py: /echo (default), /fanout, /fanout_queue and
/fanout_broadcast (all plain subscribers here), /publish (and /publish_floor, the same).
"""
import argparse
import asyncio
import ssl

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

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
