"""permessage-deflate against real clients that negotiate it themselves.

The client library is the judge here: it validates our negotiation response
(and fails the handshake on anything it does not accept) and inflates what we
send. Each parameter combination a client can offer is exercised with
messages below the min-size (sent uncompressed inside a compressed session),
compressible text, incompressible bytes, and enough messages to use the
compression context across messages."""

from __future__ import annotations

import asyncio
import itertools
import os

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.ws.test_asgi_websocket import echo_app

MESSAGES: list[str | bytes] = [
    "hi",  # under ws_deflate_min_size: goes out uncompressed
    '{"type": "chat", "payload": "hello hello hello hello hello"}' * 20,
    os.urandom(5000),  # incompressible
    "x" * 200_000,  # compresses 1000:1
    b"\x00" * 70_000,
] * 3  # again: later messages reuse (or reset) the compression context

WEBSOCKETS_OFFERS = [
    dict(server_no_context_takeover=snct, client_no_context_takeover=cnct,
         server_max_window_bits=smwb, client_max_window_bits=cmwb)
    for snct, cnct, smwb, cmwb in itertools.product(
        (False, True), (False, True), (None, 9, 12, 15), (True, None, 10)
    )
]


def offer_id(offer: dict) -> str:
    return ",".join(f"{k.split('_max_')[0] if v not in (True, False) else k}={v}" for k, v in offer.items())


@pytest.mark.parametrize("offer", WEBSOCKETS_OFFERS, ids=[offer_id(o) for o in WEBSOCKETS_OFFERS])
def test_websockets_client_negotiates_and_round_trips(run_server, offer):
    async def main(port: int) -> str:
        factory = ClientPerMessageDeflateFactory(**offer)
        async with connect(f"ws://127.0.0.1:{port}/", extensions=[factory], compression=None,
                           max_size=2**24) as ws:
            for message in MESSAGES:
                await ws.send(message)
                assert await ws.recv() == message
            return ws.response.headers["Sec-WebSocket-Extensions"]

    with run_server(echo_app) as server:
        negotiated = asyncio.run(asyncio.wait_for(main(server.port), 30))
    assert negotiated.startswith("permessage-deflate")
    if offer["server_no_context_takeover"]:
        assert "server_no_context_takeover" in negotiated
    if offer["client_no_context_takeover"]:
        assert "client_no_context_takeover" in negotiated


@pytest.mark.parametrize("server_context_takeover", [True, False])
@pytest.mark.parametrize("window_bits", [9, 12, 15])
def test_server_settings_round_trip_with_websockets_client(run_server, window_bits, server_context_takeover):
    async def main(port: int) -> str:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=2**24) as ws:
            for message in MESSAGES:
                await ws.send(message)
                assert await ws.recv() == message
            return ws.response.headers["Sec-WebSocket-Extensions"]

    with run_server(echo_app, ws_deflate_window_bits=window_bits,
                    ws_deflate_server_no_context_takeover=not server_context_takeover) as server:
        negotiated = asyncio.run(asyncio.wait_for(main(server.port), 30))
    assert negotiated.startswith("permessage-deflate")
    assert ("server_no_context_takeover" in negotiated) is (not server_context_takeover)


@pytest.mark.parametrize("compress", [9, 10, 12, 15])
def test_aiohttp_client_negotiates_and_round_trips(run_server, compress):
    async def main(port: int) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/", compress=compress,
                                          max_msg_size=2**24) as ws:
                for message in MESSAGES:
                    if isinstance(message, str):
                        await ws.send_str(message)
                        assert (await ws.receive_str()) == message
                    else:
                        await ws.send_bytes(message)
                        assert (await ws.receive_bytes()) == message
                return ws.compress, ws._response.headers.get("Sec-WebSocket-Extensions", "")

    with run_server(echo_app) as server:
        negotiated_bits, header = asyncio.run(asyncio.wait_for(main(server.port), 30))
    assert header.startswith("permessage-deflate")
    assert negotiated_bits, "aiohttp did not enable compression"


def test_compression_off_declines_every_offer(run_server):
    async def main(port: int) -> str | None:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("plain")
            assert await ws.recv() == "plain"
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    with run_server(echo_app, ws_per_message_deflate=False) as server:
        assert asyncio.run(asyncio.wait_for(main(server.port), 10)) is None


def test_large_messages_go_out_compressed_and_small_ones_plain(run_server, caplog):
    async def main(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            for message in ("small", "y" * 10_000):
                await ws.send(message)
                assert await ws.recv() == message

    with caplog.at_level(5, logger="asgiws.trace"):
        with run_server(echo_app, log_level="trace") as server:
            asyncio.run(asyncio.wait_for(main(server.port), 10))
    sent = [r.getMessage() for r in caplog.records if r.name == "asgiws.trace" and " > TEXT" in r.getMessage()]
    assert len(sent) == 2
    assert "rsv=000" in sent[0] and "len=5" in sent[0]  # under ws_deflate_min_size
    assert "rsv=100" in sent[1]  # RSV1: compressed, 10,000 bytes down to a few dozen
    assert int(sent[1].rsplit("len=", 1)[1]) < 100
