"""Messages over WS_FRAGMENT_SIZE go out fragmented, compressed as one stream (issue 4), intact for real clients."""

from __future__ import annotations

import asyncio

import aiohttp
from websockets.asyncio.client import connect

from asgiws.config import WS_FRAGMENT_SIZE, MiB

# 16 MiB of compressible text with multi-byte code points (slices must not split them).
TEXT = ('{"user": "zoë", "msg": "ça va? ✓ 🎉", "n": 12345}\n' * (16 * MiB // 50 + 1))[: 16 * MiB]
BINARY = bytes(range(256)) * (3 * MiB // 256) + b"tail"


async def send_large_app(scope, receive, send):
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": TEXT})
    await send({"type": "websocket.send", "bytes": BINARY})
    await send({"type": "websocket.send", "text": "small after"})
    await receive()


def test_websockets_client_with_deflate_receives_16_mib_message_intact(run_server, caplog):
    assert len(TEXT) > WS_FRAGMENT_SIZE

    async def main(port: int) -> str:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=2**26) as ws:
            assert await ws.recv() == TEXT
            assert await ws.recv() == BINARY
            assert await ws.recv() == "small after"
            return ws.response.headers["Sec-WebSocket-Extensions"]

    with caplog.at_level(5, logger="asgiws.trace"), run_server(send_large_app, log_level="trace") as server:
        negotiated = asyncio.run(asyncio.wait_for(main(server.port), 60))
    assert negotiated.startswith("permessage-deflate")
    sent = [r.getMessage() for r in caplog.records if r.name == "asgiws.trace" and " > " in r.getMessage()]
    text_frames = [m for m in sent if " > TEXT" in m or " > CONTINUATION" in m]
    assert len(text_frames) >= 16 + 1  # the large text as 16 frames, then the small one


def test_aiohttp_client_with_deflate_receives_16_mib_message_intact(run_server):
    async def main(port: int) -> int:
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{port}/", compress=15, max_msg_size=2**26
        ) as ws:
            assert (await ws.receive_str()) == TEXT
            assert (await ws.receive_bytes()) == BINARY
            assert (await ws.receive_str()) == "small after"
            return ws.compress

    with run_server(send_large_app) as server:
        assert asyncio.run(asyncio.wait_for(main(server.port), 60))


def test_uncompressed_16_mib_message_arrives_intact(run_server):
    async def main(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=2**26, compression=None) as ws:
            assert await ws.recv() == TEXT
            assert await ws.recv() == BINARY

    with run_server(send_large_app) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 60))
