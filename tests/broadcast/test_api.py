"""The broadcast API on one server (in-process broker), with real clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import zlib

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from asgiws.broadcast import Broadcast, BroadcastNotAvailable
from asgiws.broadcast.hub import Hub
from asgiws.broadcast.prepared import PreparedMessage
from asgiws.websocket.permessage_deflate import PerMessageDeflate
from tests.broadcast.apps import app
from tests.rawws import RawWebSocket, handshake_request


def _deflate(no_takeover: bool) -> PerMessageDeflate:
    return PerMessageDeflate(server_max_window_bits=12, client_max_window_bits=15,
                             server_no_context_takeover=no_takeover, client_no_context_takeover=False,
                             memory_level=5, min_size=64)


def test_prepared_message_frames_text_and_binary_once() -> None:
    text = PreparedMessage("héllo")
    assert text.plain == [b"\x81\x06" + "héllo".encode()]
    big = PreparedMessage(b"\x00" * 70_000)
    assert big.plain[0] == b"\x82\x7f" + (70_000).to_bytes(8, "big") and big.plain[1] == b"\x00" * 70_000
    assert big.chunks_for([]) is big.plain


def test_prepared_message_shares_compressed_frame_only_without_context_takeover() -> None:
    message = PreparedMessage("abc" * 100)
    # Context takeover: per-connection window, so the shared uncompressed frame (RSV1 clear).
    assert message.chunks_for([_deflate(False)]) is message.plain
    shared = message.chunks_for([_deflate(True)])
    assert shared is message.chunks_for([_deflate(True)])  # compressed once
    frame = shared[0]
    assert frame[0] == 0x80 | 0x40 | 0x1  # FIN, RSV1, TEXT
    inflated = zlib.decompressobj(-15).decompress(frame[2:] + b"\x00\x00\xff\xff")
    assert inflated == b"abc" * 100
    # Under min_size: never compressed.
    assert PreparedMessage("short").chunks_for([_deflate(True)]) == PreparedMessage("short").plain


class FakeConnection:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.on_connection_lost = None

    def deliver_prepared(self, messages: list[PreparedMessage]) -> bool:
        self.writes.append([chunk for message in messages for chunk in message.plain])
        return True


def test_hub_subscribe_unsubscribe_forget() -> None:
    async def main() -> None:
        hub = Hub()
        a, b = FakeConnection(), FakeConnection()
        hub.subscribe(a, "x")
        hub.subscribe(b, "x")
        hub.subscribe(a, "y")
        assert hub.deliver("x", "1") == 2
        await asyncio.sleep(0)
        hub.unsubscribe(b, "x")
        assert hub.deliver("x", "2") == 1
        await asyncio.sleep(0)
        assert b.writes == [[b"\x81\x011"]]
        assert a.on_connection_lost == hub.forget
        hub.deliver("y", "lost before the flush")
        hub.forget(a)
        await asyncio.sleep(0)
        assert len(a.writes) == 2
        assert hub.channels == {} and hub.deliver("y", "3") == 0

    asyncio.run(main())


def test_hub_writes_a_burst_to_each_connection_in_one_write_in_order() -> None:
    async def main() -> None:
        hub = Hub()
        a = FakeConnection()
        hub.subscribe(a, "x")
        hub.subscribe(a, "y")
        for i in range(5):
            hub.deliver("x" if i % 2 else "y", str(i))
        await asyncio.sleep(0)
        assert a.writes == [[b"\x81\x01" + str(i).encode() for i in range(5)]]

    asyncio.run(main())


def test_hub_keeps_the_order_queued_when_a_replay_joins_a_publish_in_one_iteration() -> None:
    async def main() -> None:
        hub = Hub()
        a, b, late = FakeConnection(), FakeConnection(), FakeConnection()
        hub.subscribe(a, "x")
        hub.subscribe(b, "x")
        hub.deliver("x", "1")  # the iteration's first publish waits as one batch for both
        hub.subscribe(late, "x")  # after the publish: not one of its recipients
        hub.replay(b, "x", [("o1", "h")], envelope=False)  # spreads the batch, then queues behind it
        hub.deliver("x", "2")
        await asyncio.sleep(0)
        frame = {text: b"\x81\x01" + text.encode() for text in ("1", "2", "3", "h")}
        assert a.writes == [[frame["1"], frame["2"]]]
        assert b.writes == [[frame["1"], frame["h"], frame["2"]]]
        assert late.writes == [[frame["2"]]]
        hub.deliver("x", "3")  # a new iteration: a batch again, the same list for every connection
        await asyncio.sleep(0)
        assert a.writes[-1] == b.writes[-1] == late.writes[-1] == [frame["3"]]

    asyncio.run(main())


def test_broadcast_outside_asgiws_raises_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(BroadcastNotAvailable, match="needs the asgiws server"):
            Broadcast.from_scope({"type": "http", "extensions": {}})

    asyncio.run(main())
    with pytest.raises(BroadcastNotAvailable):
        Broadcast.current()


async def _join(url: str, **kwargs: object):
    ws = await connect(url, **kwargs)
    assert await ws.recv() == "subscribed"
    return ws


def test_publish_from_websocket_and_http_reaches_every_subscriber(run_server) -> None:
    with run_server(app) as server:
        async def main() -> None:
            clients = [await _join(server.url("/ws/room", "ws")) for _ in range(20)]
            other = await _join(server.url("/ws/elsewhere", "ws"))
            await clients[0].send("from ws")
            for ws in clients:
                assert await asyncio.wait_for(ws.recv(), 5) == "from ws"
            async with httpx.AsyncClient() as http:
                r = await http.post(server.url("/publish/room"), content="from http")
                assert r.status_code == 200
                r = await http.post(server.url("/publish/room?binary=1"), content=b"\x00\xff")
                assert (await http.get(server.url("/count/room"))).json() == {"subscribers": 20}
            for ws in clients:
                assert await asyncio.wait_for(ws.recv(), 5) == "from http"
                assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xff"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(other.recv(), 0.2)
            for ws in clients + [other]:
                await ws.close()

        asyncio.run(main())


def test_unsubscribe_and_disconnect_leave_the_channel(run_server) -> None:
    with run_server(app) as server:
        async def main() -> None:
            a = await _join(server.url("/ws/c", "ws"))
            b = await _join(server.url("/ws/c", "ws"))
            await b.send("unsub")
            assert await b.recv() == "unsubscribed"
            await a.send("only a")
            assert await a.recv() == "only a"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.recv(), 0.2)
            await a.close()
            await b.close()
            await asyncio.sleep(0.1)

        asyncio.run(main())
        hub = server.server.broker.hub
        assert server.call(lambda: dict(hub.channels)) == {}


@pytest.mark.parametrize("no_takeover", [False, True])
def test_broadcast_to_deflate_clients_with_and_without_context_takeover(run_server, no_takeover: bool) -> None:
    # Mixed session: the app's own compressed sends and shared broadcast frames interleave.
    with run_server(app, ws_deflate_min_size=16) as server:
        async def main() -> None:
            factory = ClientPerMessageDeflateFactory(server_no_context_takeover=no_takeover)
            clients = [await _join(server.url("/ws/z", "ws"), extensions=[factory], compression=None)
                       for _ in range(3)]
            for i in range(3):
                await clients[i].send(f"message {i} " + "lorem ipsum " * 50)
                for ws in clients:
                    assert await asyncio.wait_for(ws.recv(), 5) == f"message {i} " + "lorem ipsum " * 50
            for ws in clients:
                assert ws.protocol.extensions and ws.protocol.extensions[0].name == "permessage-deflate"
                await ws.close()

        asyncio.run(main())


def test_send_queue_bound_closes_a_subscriber_that_does_not_read(run_server) -> None:
    # A subscriber that never reads is dropped once its backlog passes
    # ws_max_send_queue; the one that reads keeps receiving.
    with run_server(app, ws_max_send_queue=256 * 1024) as server:
        stalled = RawWebSocket(server.port, request=handshake_request("/ws/big"))
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert stalled.status == 101

        async def main() -> None:
            reader = await _join(server.url("/ws/big", "ws"), max_size=None)
            async with httpx.AsyncClient() as http:
                for i in range(40):
                    await http.post(server.url("/publish/big?binary=1"), content=bytes([i]) * 200_000)
                    assert (await asyncio.wait_for(reader.recv(), 5))[:1] == bytes([i])
                assert (await http.get(server.url("/count/big"))).json() == {"subscribers": 1}
            await reader.close()

        asyncio.run(main())
        stalled.sock.close()


def test_broadcasts_held_behind_a_fragmented_send_are_bounded_by_the_send_queue(run_server):
    """A client that stops reading mid-way through a large message cannot make
    the server hold broadcasts for it without bound: past ws_max_send_queue it is dropped."""
    from asgiws.broadcast import Broadcast

    disconnects: list[dict] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        hub = Broadcast.from_scope(scope)
        await hub.subscribe(scope, "news")

        async def flood():
            for _ in range(400):
                await hub.publish("news", b"n" * 10_000)
                await asyncio.sleep(0)

        flooding = asyncio.ensure_future(flood())
        try:
            await send({"type": "websocket.send", "bytes": b"x" * (8 * 1024 * 1024)})
        except OSError:
            pass
        await flooding
        disconnects.append(await receive())

    with run_server(app, ws_max_send_queue=1024 * 1024) as server:
        sock = RawWebSocket(server.port)  # never reads past the handshake
        assert sock.status == 101
        deadline = time.monotonic() + 10
        while not disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.close()
    assert disconnects and disconnects[0]["code"] == 1008


def test_in_process_channels_nobody_watches_with_nothing_live_are_swept() -> None:
    from asgiws.broadcast import MemoryBroker

    async def main() -> None:
        broker = MemoryBroker(history_size=10, history_ttl=0.2)
        watcher = FakeConnection()
        await broker.subscribe(watcher, "watched")  # type: ignore[arg-type]
        old = await broker.publish("idle", "m")
        await broker.publish("watched", "w")
        assert broker.sweep() == 0  # "idle" still holds a live message
        await asyncio.sleep(0.3)
        assert broker.sweep() == 1  # "idle" is gone; "watched" has a subscriber
        assert await broker.history("idle") == []
        # The channel made again has a new epoch: the old offset is not taken for a position in it.
        late = FakeConnection()
        sub = await broker.subscribe(late, "idle", since=old)  # type: ignore[arg-type]
        assert sub.recovered is False and sub.offset.split(":")[0] != old.split(":")[0]
        await asyncio.sleep(0)

    asyncio.run(main())


def test_in_process_server_restart_makes_old_offsets_not_recovered(run_server) -> None:
    async def resume(server, since: str | None) -> dict:
        ws = await connect(server.url("/resume/r" + (f"?since={since}" if since else ""), "ws"))
        start = json.loads(await ws.recv())
        await ws.close()
        return start

    with run_server(app) as server:
        async def first() -> str:
            async with httpx.AsyncClient() as http:
                return (await http.post(server.url("/publish/r"), content="before")).text

        offset = asyncio.run(first())
        assert asyncio.run(resume(server, offset))["recovered"] is True
    with run_server(app) as server:
        assert asyncio.run(resume(server, offset))["recovered"] is False
