"""Large binary frames are read straight into the message (ServerConnection.payload_buffer).

While such a frame arrives a BufferedProtocol stands in on the transport; these
tests check, on both event loops, that every byte lands where it belongs
whatever the read boundaries, that what follows a large frame is parsed, and
that a slow app (reading paused) and a close in the middle behave as before.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from websockets.asyncio.client import connect

from asgiws.protocols.websocket import WebSocketProtocol
from examples.hello import websocket_echo
from tests.rawws import RawWebSocket
from tests.wire import Opcode, client_frame

pytestmark = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


def protocols(server):
    """The class of the protocol on each WebSocket's transport: the reader or the WebSocketProtocol."""
    return [type(c.transport.get_protocol()).__name__ for c in server.server_state.connections
            if isinstance(c, WebSocketProtocol)]


async def echo_app(scope, receive, send):
    assert scope["type"] == "websocket"
    await websocket_echo(receive, send)


def test_large_binary_messages_echo_intact_between_small_ones(run_server, loop):
    sizes = [65535, 65536, 65536 + 4096, 65536 + 4097, 100_003, 1 << 20, 5 * (1 << 20) + 7]

    async def main(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=2**26, compression=None) as ws:
            for size in sizes:
                payload = os.urandom(size)
                await ws.send(payload)
                await ws.send("after")
                assert await ws.recv() == payload, size
                assert await ws.recv() == "after"
            # several in flight at once, so reads hold the end of one and the start of the next
            payloads = [os.urandom(200_000 + i) for i in range(6)]
            for payload in payloads:
                await ws.send(payload)
            for payload in payloads:
                assert await ws.recv() == payload

    with run_server(echo_app, loop=loop, ws_max_size=2**26) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 60))


def test_large_frame_trickled_in_odd_pieces_with_a_ping_after_it(run_server, loop):
    payload = os.urandom(300_000)
    data = client_frame(Opcode.BINARY, payload) + client_frame(Opcode.PING, b"after") + client_frame(Opcode.TEXT, b"done")
    with run_server(echo_app, loop=loop) as server:
        ws = RawWebSocket(server.port)
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        for size in (1, 5, 13, 70_000, 1, 3, 99_999, 2, 4095, 4097, 60_000):
            ws.sock.sendall(data[pos : pos + size])
            pos += size
            time.sleep(0.005)
        ws.sock.sendall(data[pos:])
        frames = [ws.read_frame() for _ in range(3)]
        # The pong is the codec's answer, written at once; the echoes come from the app, in order.
        assert (0xA, True, b"after") in frames
        frames.remove((0xA, True, b"after"))
        assert frames == [(Opcode.BINARY, True, payload), (Opcode.TEXT, True, b"done")]
        ws.close()


def test_client_gone_in_the_middle_of_a_large_frame_disconnects_the_app(run_server, loop):
    seen: list[dict] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    with run_server(app, loop=loop) as server:
        ws = RawWebSocket(server.port)
        ws.sock.sendall(client_frame(Opcode.BINARY, os.urandom(500_000))[:200_000])
        time.sleep(0.1)
        ws.sock.close()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == [{"type": "websocket.disconnect", "code": 1006}]


def test_slow_app_pauses_reading_between_large_frames_and_gets_every_byte(run_server, loop):
    payloads = [os.urandom(150_000 + 1000 * i) for i in range(8)]
    got: list[bytes] = []

    async def slow_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            got.append(message["bytes"])
            await asyncio.sleep(0.02)  # the queue (1 message) fills: reading pauses
            if len(got) == len(payloads):
                await send({"type": "websocket.send", "text": "all"})

    async def main(port: int) -> str:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            for payload in payloads:
                await ws.send(payload)
            return await ws.recv()

    with run_server(slow_app, loop=loop, ws_max_queue=1) as server:
        assert asyncio.run(asyncio.wait_for(main(server.port), 30)) == "all"
    assert got == payloads


def test_one_at_a_time_the_reader_stays_for_the_next_large_message_and_leaves_after_a_small_one(
        run_server, loop):
    # Echoed one at a time, the next large message arrives only after the answer: the in-place
    # reader stays on the transport for that read, so its first bytes are not read through a
    # whole bytes object; a read that begins no large frame gives the transport back.
    async def main(server) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/", max_size=2**22, compression=None) as ws:
            for message in [os.urandom(1 << 20), os.urandom(1 << 20), os.urandom(70_000),
                            "x" * 300_000, os.urandom(1 << 20), b"tiny", "small", os.urandom(65536 + 4097)]:
                await ws.send(message)
                assert await ws.recv() == message
                if isinstance(message, bytes) and len(message) >= 1 << 20:  # more than a read brings
                    assert protocols(server) == ["_PayloadReader"], len(message)
            await ws.send("last")
            assert await ws.recv() == "last"
            assert protocols(server) == ["WebSocketProtocol"]

    with run_server(echo_app, loop=loop, ws_max_size=2**22) as server:
        asyncio.run(asyncio.wait_for(main(server), 60))


def test_the_reader_stays_when_a_large_frames_tail_comes_in_several_reads(run_server, loop):
    # The kernel may cut a large frame's last KiB over two reads or more: reads that only bring
    # the rest of the frame begin no frame, so the reader stays for the next message; only a
    # read that begins a small frame gives the transport back (what the test above relies on,
    # whatever the read boundaries).
    payload = os.urandom(1 << 20)
    frame = client_frame(Opcode.BINARY, payload)
    with run_server(echo_app, loop=loop, ws_max_size=2**22) as server:
        ws = RawWebSocket(server.port)
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws.sock.sendall(frame[:-3000])
        time.sleep(0.2)  # the payload read in place, the frame's tail not sent yet
        for piece in (frame[-3000:-1500], frame[-1500:-1], frame[-1:]):
            ws.sock.sendall(piece)
            time.sleep(0.05)  # each piece its own read
        assert ws.read_frame() == (Opcode.BINARY, True, payload)
        assert protocols(server) == ["_PayloadReader"]
        ws.sock.sendall(client_frame(Opcode.TEXT, b"small"))
        assert ws.read_frame() == (Opcode.TEXT, True, b"small")
        assert protocols(server) == ["WebSocketProtocol"]
        ws.close()
