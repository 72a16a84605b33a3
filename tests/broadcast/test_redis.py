"""The Redis broker: two workers behind one port, and Redis stopped and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.broadcast.conftest import RedisServer, free_port, wait_for_port, wait_for_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def join(url: str) -> tuple[object, str]:
    ws = await connect(url)
    assert await asyncio.wait_for(ws.recv(), 5) == "subscribed"
    pid = await asyncio.wait_for(ws.recv(), 5)
    return ws, pid


def test_two_workers_one_port_deliver_each_others_publishes(redis_server: RedisServer) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "tests.broadcast.apps:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--broadcast-url", redis_server.url, "--lifespan", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port)
        wait_for_workers(redis_server.url, 2)

        async def main() -> None:
            clients = [await join(f"ws://127.0.0.1:{port}/ws/room?pid=1") for _ in range(40)]
            by_worker: dict[str, list] = {}
            for ws, pid in clients:
                by_worker.setdefault(pid, []).append(ws)
            assert len(by_worker) == 2, f"all 40 clients landed on one worker: {list(by_worker)}"
            (pid_a, on_a), (pid_b, on_b) = by_worker.items()
            await on_a[0].send(f"hello from {pid_a}")
            for ws in on_a + on_b:
                assert await asyncio.wait_for(ws.recv(), 5) == f"hello from {pid_a}"
            await on_b[0].send(f"hello from {pid_b}")
            for ws in on_a + on_b:
                assert await asyncio.wait_for(ws.recv(), 5) == f"hello from {pid_b}"
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{port}/publish/room?binary=1", content=b"\x01\x02")
                assert r.status_code == 200
            for ws in on_a + on_b:
                assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x02"
            for ws, _ in clients:
                await ws.close()

        asyncio.run(main())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    assert "No --broadcast-url" not in output


def test_workers_without_broadcast_url_warn_at_start_up() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "tests.broadcast.apps:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--lifespan", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    assert "No --broadcast-url: asgiws.broadcast messages only reach the clients of the worker" in output


async def publish_until_delivered(http: httpx.AsyncClient, url: str, ws, text: str, timeout: float = 15.0) -> None:
    """Publish until Redis takes it (the broker reconnects with backoff), then expect it on `ws`."""
    deadline = time.monotonic() + timeout
    while True:
        r = await http.post(url, content=text)
        if r.status_code == 200:
            try:
                assert await asyncio.wait_for(ws.recv(), 1.0) == text
                return
            except asyncio.TimeoutError:
                pass  # published before this worker re-subscribed: try again
        assert time.monotonic() < deadline, f"broadcast did not recover: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)


def test_redis_stopped_and_restarted(run_server, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    from tests.broadcast.apps import app

    with run_server(app, broadcast_url=redis_server.url) as server:
        wait_for_workers(redis_server.url, 1)

        async def main() -> None:
            ws = await connect(server.url("/ws/r", "ws"))
            assert await ws.recv() == "subscribed"
            async with httpx.AsyncClient() as http:
                await publish_until_delivered(http, server.url("/publish/r"), ws, "before")
                redis_server.stop()
                r = await http.post(server.url("/publish/r"), content="while down")
                assert r.status_code == 503 and "could not publish to 'r' through Redis" in r.text
                await ws.send("from ws while down")
                assert await asyncio.wait_for(ws.recv(), 5) == "unavailable"
                # Still serving HTTP and WebSocket.
                assert (await http.get(server.url("/count/r"))).json() == {"subscribers": 1}
                # A new subscription cannot be made without Redis: the app closes it with 1013.
                refused = await connect(server.url("/ws/r", "ws"))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(refused.recv(), 5)
                assert refused.close_code == 1013 and refused.close_reason == "broadcast unavailable"
                redis_server.start()
                await publish_until_delivered(http, server.url("/publish/r"), ws, "after restart")
                wait_for_workers(redis_server.url, 1)
                late = await connect(server.url("/ws/r", "ws"))
                assert await late.recv() == "subscribed"
                r = await http.post(server.url("/publish/r"), content="to both")
                assert r.status_code == 200
                assert await asyncio.wait_for(ws.recv(), 5) == "to both"
                assert await asyncio.wait_for(late.recv(), 5) == "to both"
            await ws.close()
            await late.close()

        asyncio.run(main())
    assert "Broadcast: lost Redis" in caplog.text


def test_server_starts_with_redis_down_and_connects_later(run_server, redis_server: RedisServer) -> None:
    from tests.broadcast.apps import app

    redis_server.stop()
    with run_server(app, broadcast_url=redis_server.url) as server:
        async def main() -> None:
            early = await connect(server.url("/ws/s", "ws"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(early.recv(), 5)
            assert early.close_code == 1013
            async with httpx.AsyncClient() as http:
                r = await http.post(server.url("/publish/s"), content="x")
                assert r.status_code == 503 and "Connection refused" in r.text
                redis_server.start()
                wait_for_workers(redis_server.url, 1)
                ws = await connect(server.url("/ws/s", "ws"))
                assert await ws.recv() == "subscribed"
                await publish_until_delivered(http, server.url("/publish/s"), ws, "late")
            await ws.close()

        asyncio.run(main())
