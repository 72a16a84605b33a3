"""History, resume, envelopes and presence: the same tests on the in-process and the Redis broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from asgiws.broadcast import Broadcast, BroadcastNeedsAsgiws, BroadcastNotAvailable, BroadcastUnavailable
from asgiws.broadcast.offsets import parse_offset
from asgiws.testing import LiveServer, serve_in_thread
from tests.broadcast.apps import app
from tests.broadcast.conftest import RedisServer, free_port, redis_binary
from tests.broadcast.resume_client import Resumer

Serve = Callable[..., contextlib.AbstractContextManager[LiveServer]]


@pytest.fixture(params=["memory", "redis"])
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """`with serve(**config) as server`: the test app on the in-process broker, or on a fresh redis-server."""
    if request.param == "memory":
        yield lambda **options: serve_in_thread(app, **options)
        return
    redis_server = RedisServer(redis_binary(), free_port())
    redis_server.start()
    try:
        yield lambda **options: serve_in_thread(app, broadcast_url=redis_server.url, **options)
    finally:
        redis_server.stop()


async def publish(http: httpx.AsyncClient, server: LiveServer, channel: str, text: str) -> str:
    r = await http.post(server.url(f"/publish/{channel}"), content=text)
    assert r.status_code == 200, r.text
    return r.text


def test_publish_returns_offsets_increasing_per_channel(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                offsets = [await publish(http, server, "a", f"m{i}") for i in range(5)]
                other = await publish(http, server, "b", "x")
            parsed = [parse_offset(offset) for offset in offsets]
            assert all(p is not None for p in parsed)
            assert [p.seq for p in parsed] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
            assert len({p.epoch for p in parsed}) == 1  # type: ignore[union-attr]
            assert parse_offset(other).seq == 1  # type: ignore[union-attr]

        asyncio.run(main())


def test_resume_replays_every_missed_message_then_live_without_gap_or_duplicate(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            client = Resumer(server.url("", "ws"), "room")
            start = await client.connect()
            assert start["recovered"] is False and start["replayed"] == 0  # no since: live only
            async with httpx.AsyncClient() as http:
                for i in range(3):
                    await publish(http, server, "room", f"m{i}")
                await client.receive_until(3)
                await client.close()
                for i in range(3, 8):
                    await publish(http, server, "room", f"m{i}")
                start = await client.connect()
                assert start["recovered"] is True and start["replayed"] == 5
                for i in range(8, 10):
                    await publish(http, server, "room", f"m{i}")
                await client.receive_until(10)
            assert client.messages == [f"m{i}" for i in range(10)]
            assert parse_offset(client.offset).seq == 10  # type: ignore[union-attr]
            assert parse_offset(start["offset"]).seq == 8  # type: ignore[union-attr]  # latest when it started
            # Resuming from the latest offset: recovered, nothing to replay.
            await client.close()
            start = await client.connect()
            assert start["recovered"] is True and start["replayed"] == 0
            await client.close()

        asyncio.run(main())


def test_resume_past_the_history_size_says_not_recovered(serve: Serve) -> None:
    with serve(broadcast_history_size=3) as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                first = await publish(http, server, "small", "0")
                for i in range(1, 4):
                    await publish(http, server, "small", str(i))
                # Messages 1..3 are the 3 kept: resuming from 0 misses none.
                ok = Resumer(server.url("", "ws"), "small")
                ok.offset = first
                assert (await ok.connect())["recovered"] is True
                await ok.receive_until(3)
                assert ok.messages == ["1", "2", "3"]
                await publish(http, server, "small", "4")  # message 1 is trimmed now
                late = Resumer(server.url("", "ws"), "small")
                late.offset = first
                start = await late.connect()
                assert start["recovered"] is False and start["replayed"] == 0
                await publish(http, server, "small", "5")
                assert await late.receive() == "5"  # live delivery goes on
                await ok.receive_until(5)
                assert ok.messages == ["1", "2", "3", "4", "5"]
                await ok.close()
                await late.close()

        asyncio.run(main())


def test_resume_after_the_history_ttl_says_not_recovered(serve: Serve) -> None:
    with serve(broadcast_history_ttl=0.5) as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                first = await publish(http, server, "brief", "0")
                await publish(http, server, "brief", "1")
                await asyncio.sleep(1.0)
                client = Resumer(server.url("", "ws"), "brief")
                client.offset = first
                assert (await client.connect())["recovered"] is False
                r = await http.get(server.url("/history/brief"))
                assert r.json() == []
                await client.close()

        asyncio.run(main())


@pytest.mark.parametrize("since", ["nonsense", "abc:1-2", "", "x" * 200])
def test_resume_from_an_offset_this_server_never_made_says_not_recovered(serve: Serve, since: str) -> None:
    with serve() as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                await publish(http, server, "c", "before")
            client = Resumer(server.url("", "ws"), "c")
            client.offset = since
            start = await client.connect()
            assert start["recovered"] is False and start["replayed"] == 0
            async with httpx.AsyncClient() as http:
                await publish(http, server, "c", "after")
            assert await client.receive() == "after"
            await client.close()

        asyncio.run(main())


def test_history_latest_and_since_with_limit(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                offsets = [await publish(http, server, "h", f"m{i}") for i in range(6)]
                r = await http.get(server.url("/history/h?limit=2"))
                assert r.json() == [[offsets[4], "m4"], [offsets[5], "m5"]]
                r = await http.get(server.url("/history/h"), params={"since": offsets[1], "limit": 3})
                assert r.json() == [[offsets[2], "m2"], [offsets[3], "m3"], [offsets[4], "m4"]]
                r = await http.get(server.url("/history/none"))
                assert r.json() == []

        asyncio.run(main())


def test_envelope_carries_binary_data_as_base64(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            client = Resumer(server.url("", "ws"), "bin")
            await client.connect()
            async with httpx.AsyncClient() as http:
                r = await http.post(server.url("/publish/bin?binary=1"), content=b"\x00\xff\x10")
                assert r.status_code == 200
                assert client.ws is not None
                frame = await asyncio.wait_for(client.ws.recv(), 10)
            assert isinstance(frame, str)
            assert json.loads(frame) == {"channel": "bin", "offset": r.text, "data_base64": "AP8Q"}
            await client.close()

        asyncio.run(main())


def test_plain_and_enveloped_subscribers_of_one_channel(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            plain = await connect(server.url("/ws/mixed", "ws"))
            assert await plain.recv() == "subscribed"
            enveloped = Resumer(server.url("", "ws"), "mixed")
            await enveloped.connect()
            async with httpx.AsyncClient() as http:
                offset = await publish(http, server, "mixed", "hi")
            assert await asyncio.wait_for(plain.recv(), 10) == "hi"
            assert await enveloped.receive() == "hi" and enveloped.offset == offset
            await plain.close()
            await enveloped.close()

        asyncio.run(main())


def test_presence_lists_subscribers_and_forgets_those_that_leave(serve: Serve) -> None:
    with serve() as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                async def names() -> list[str]:
                    r = await http.get(server.url("/presence/p"))
                    return sorted(info["name"] for info in r.json())

                ann = Resumer(server.url("", "ws"), "p", name="ann")
                bob = Resumer(server.url("", "ws"), "p", name="bob")
                anonymous = Resumer(server.url("", "ws"), "p")
                for client in (ann, bob, anonymous):
                    await client.connect()
                assert await names() == ["ann", "bob"]
                await bob.close()
                deadline = time.monotonic() + 10
                while await names() != ["ann"]:
                    assert time.monotonic() < deadline, await names()
                    await asyncio.sleep(0.05)
                await ann.close()
                await anonymous.close()

        asyncio.run(main())


def test_two_exception_names_are_told_apart() -> None:
    assert BroadcastNotAvailable is BroadcastNeedsAsgiws
    assert not issubclass(BroadcastUnavailable, BroadcastNeedsAsgiws)
    assert not issubclass(BroadcastNeedsAsgiws, BroadcastUnavailable)
    with pytest.raises(BroadcastNeedsAsgiws, match="needs the asgiws server"):
        Broadcast.current()


def test_presence_info_that_is_not_json_is_a_type_error(run_server) -> None:
    errors: list[str] = []

    async def bad_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await Broadcast.from_scope(scope).subscribe(scope, "x", presence=object())
        except TypeError as exc:
            errors.append(str(exc))
        await send({"type": "websocket.close", "code": 1000})

    with run_server(bad_app) as server:
        async def main() -> None:
            ws = await connect(server.url("/", "ws"))
            await ws.wait_closed()

        asyncio.run(main())
    assert errors and errors[0].startswith("presence info must be JSON-able")


def test_two_hundred_clients_subscribing_at_once_all_get_every_message(serve: Serve) -> None:
    # 200 concurrent history reads: more than redis-py's default pool allows (100);
    # the broker's bounded pool makes them wait their turn instead of failing.
    with serve() as server:
        async def main() -> None:
            clients = [Resumer(server.url("", "ws"), "crowd") for _ in range(200)]
            starts = await asyncio.gather(*(client.connect(timeout=30) for client in clients))
            assert all("offset" in start for start in starts)
            async with httpx.AsyncClient() as http:
                for i in range(3):
                    await publish(http, server, "crowd", f"m{i}")
            await asyncio.gather(*(client.receive_until(3) for client in clients))
            assert all(client.messages == ["m0", "m1", "m2"] for client in clients)
            await asyncio.gather(*(client.close() for client in clients))

        asyncio.run(main())
