"""asgiws.testing: the real server on the test's own loop, under anyio and pytest-asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from asgiws.testing import (
    StartupError,
    WebSocketClosed,
    WebSocketRejected,
    serve,
    serve_in_thread,
    serve_workers,
)
from tests.broadcast.apps import app as broadcast_app
from tests.broadcast.conftest import RedisServer


def make_app(events: list[str]) -> FastAPI:
    """Echo over WebSocket, a lifespan that records itself, and a few ways to close."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol=offered[0] if offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    events.append(f"client closed {message['code']} {message.get('reason') or ''}".strip())
                    return
                if message.get("text") == "bye":
                    await websocket.close(4001, "asked to leave")
                    return
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            pass

    @app.websocket("/private")
    async def private(websocket: WebSocket) -> None:
        await websocket.close(1008)  # before accept: the server answers 403

    return app


async def exercise(events: list[str]) -> None:
    """What both plugins' tests run: lifespan, HTTP, every send/receive, both close directions."""
    async with serve(make_app(events)) as server:
        assert events == ["startup"]
        response = await server.http.get("/health")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        async with server.websocket("/echo", subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1" and ws.close_code is None
            await ws.send_text("héllo")
            assert await ws.receive_text() == "héllo"
            await ws.send_bytes(b"\x00\xff")
            assert await ws.receive_bytes() == b"\x00\xff"
            await ws.send_json({"n": [1, 2]})
            assert await ws.receive_json() == {"n": [1, 2]}
            await ws.send_text("bye")
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (4001, "asked to leave")
            assert (ws.close_code, ws.close_reason) == (4001, "asked to leave")
        async with server.websocket("/echo") as ws:
            await ws.close(4000, "done")
            assert ws.close_code == 4000  # the server echoes the client's code (RFC 6455 5.5.1)
        with pytest.raises(WebSocketRejected) as rejected:
            async with server.websocket("/private"):
                pass
        assert rejected.value.status_code == 403
    assert events[-1] == "shutdown"
    assert "client closed 4000 done" in events


@pytest.mark.anyio
async def test_serve_under_anyio_runs_lifespan_http_and_websocket() -> None:
    await exercise([])


@pytest.mark.asyncio
async def test_serve_under_pytest_asyncio_runs_lifespan_http_and_websocket() -> None:
    await exercise([])


@pytest.mark.anyio
async def test_serve_raises_startup_error_with_the_apps_message() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("database is unreachable")
        yield

    with pytest.raises(StartupError, match="database is unreachable"):
        async with serve(FastAPI(lifespan=lifespan)):
            pytest.fail("serve() yielded after a failed startup")


@pytest.mark.anyio
async def test_serve_raises_startup_error_for_a_bad_setting() -> None:
    with pytest.raises(StartupError, match="could not bind"):
        async with serve(make_app([]), host="192.0.2.1"):  # TEST-NET-1: not an address of this machine
            pass


@pytest.mark.anyio
async def test_receive_times_out_instead_of_hanging() -> None:
    async with serve(make_app([])) as server, server.websocket("/echo") as ws:
        with pytest.raises(TimeoutError, match="waited 0.2 s for a message"):
            await ws.receive_text(timeout=0.2)
        await ws.send_text("still open")
        assert await ws.receive_text() == "still open"


@pytest.mark.anyio
async def test_receive_text_refuses_a_binary_message() -> None:
    async with serve(make_app([])) as server, server.websocket("/echo") as ws:
        await ws.send_bytes(b"\x01\x02")
        with pytest.raises(TypeError, match="expected a text message, received 2 bytes of binary"):
            await ws.receive_text()


async def join(server, channel: str):  # type: ignore[no-untyped-def]
    stack = contextlib.AsyncExitStack()
    ws = await stack.enter_async_context(server.websocket(f"/ws/{channel}"))
    assert await ws.receive_text() == "subscribed"
    return stack, ws


@pytest.mark.anyio
async def test_broadcast_reaches_several_clients_of_one_server() -> None:
    async with serve(broadcast_app, lifespan="off") as server, contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(5):
            inner, ws = await join(server, "room")
            stack.push_async_exit(inner)
            clients.append(ws)
        await clients[0].send_text("from a client")
        assert [await ws.receive_text() for ws in clients] == ["from a client"] * 5
        assert (await server.http.post("/publish/room", content="from http")).status_code == 200
        assert [await ws.receive_text() for ws in clients] == ["from http"] * 5


async def cross_worker_delivery(**config: object) -> None:
    async with serve_workers(broadcast_app, 2, lifespan="off", **config) as (a, b), \
            contextlib.AsyncExitStack() as stack:
        assert a.port != b.port
        inner_a, ws_a = await join(a, "room")
        inner_b, ws_b = await join(b, "room")
        stack.push_async_exit(inner_a)
        stack.push_async_exit(inner_b)
        response = await b.http.post("/publish/room", content="published on worker b")
        assert response.status_code == 200
        assert await ws_a.receive_text() == "published on worker b"
        assert await ws_b.receive_text() == "published on worker b"
        await ws_a.send_text("sent through worker a")
        assert await ws_b.receive_text() == "sent through worker a"
        assert await ws_a.receive_text() == "sent through worker a"


@pytest.mark.anyio
async def test_two_workers_share_the_in_process_broker() -> None:
    await cross_worker_delivery()


@pytest.mark.asyncio
async def test_two_workers_share_a_redis_broker(redis_server: RedisServer) -> None:
    await cross_worker_delivery(broadcast_url=redis_server.url)


def test_serve_in_thread_for_blocking_clients() -> None:
    events: list[str] = []
    with serve_in_thread(make_app(events)) as server:
        assert events == ["startup"]
        assert httpx.get(server.url("/health"), timeout=10).json() == {"status": "ok"}
        # httpx has closed its connection; the server sees the FIN on its own loop, a moment later.
        deadline = time.monotonic() + 10
        while server.call(lambda: len(server.server_state.connections)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.call(lambda: len(server.server_state.connections)) == 0
    assert events == ["startup", "shutdown"]


def test_serve_in_thread_raises_startup_error() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no config file"})

    with pytest.raises(StartupError, match="no config file"), serve_in_thread(app, lifespan="on"):
        pytest.fail("serve_in_thread() yielded after a failed startup")


@pytest.fixture
def anyio_backend() -> str:
    # The server needs asyncio (or uvloop): trio cannot run it.
    return "asyncio"


def test_event_loop_is_left_clean() -> None:
    async def use() -> None:
        async with serve(make_app([])) as server, server.websocket("/echo") as ws:
            assert (await server.http.get("/health")).status_code == 200
            await ws.send_text("x")
            await ws.receive_text()

    async def main() -> None:
        await asyncio.wait_for(use(), 60)
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert leftover == []

    asyncio.run(main())


@pytest.mark.anyio
async def test_wait_closed_returns_the_servers_code_and_an_import_string_is_served() -> None:
    async with serve("examples.chat.app:app") as server:
        async with server.websocket("/ws?name=no%20spaces") as ws:  # the chat refuses the name with 1008
            code, reason = await ws.wait_closed()
        assert code == 1008 and reason.startswith("name must be")
        async with server.websocket("/ws?name=ok") as ws:
            assert (await ws.receive_json())["type"] == "welcome"
        assert ws.close_code == 1000  # closed by the client on leaving the block; the server echoed it
