"""The benchmark app and the soak command work against the real server.

Nothing here is timed: the figures live in bench/RESULTS.md and soak/README.md.
These tests keep the tools that produce them honest (every fan-out shape
delivers, the soak counts and checks what it says it does).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from websockets.asyncio.client import connect

from bench.app import app as bench_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_publish_reaches_every_fanout_shape(run_server) -> None:
    async def scenario(port: int) -> list[str]:
        base = f"ws://127.0.0.1:{port}"
        direct = [await connect(f"{base}/fanout") for _ in range(3)]
        queued = [await connect(f"{base}/fanout_queue") for _ in range(3)]
        # asgiws.broadcast subscribers: the server writes the publish to them itself
        broadcast = [await connect(f"{base}/fanout_broadcast") for _ in range(3)]
        gone = await connect(f"{base}/fanout")
        await gone.close()  # a subscriber that left must not stop the others
        async with connect(f"{base}/publish") as publisher:
            await asyncio.sleep(0.2)  # subscribers register after accept
            await publisher.send("hello")
            await publisher.send(b"\x00\x01")
            received = [await asyncio.wait_for(ws.recv(), 5) for ws in direct + queued + broadcast
                        for _ in range(2)]
        for ws in direct + queued + broadcast:
            await ws.close()
        return received

    with run_server(bench_app) as server:
        received = asyncio.run(scenario(server.port))
    assert received == ["hello", b"\x00\x01"] * 9


def test_bench_floor_publisher_writes_each_fanout_subscriber_its_frame(run_server) -> None:
    # bench/run.py's fanout_floor: the publisher's loop with the server's send taken out.
    async def scenario(port: int) -> list[str]:
        base = f"ws://127.0.0.1:{port}"
        subscribers = [await connect(f"{base}/fanout") for _ in range(3)]
        async with connect(f"{base}/publish_floor") as publisher:
            await asyncio.sleep(0.2)  # subscribers register after accept
            await publisher.send("round 0")
            await publisher.send("x" * 200)  # over a small frame: through the app's send
            received = [await asyncio.wait_for(ws.recv(), 5) for ws in subscribers for _ in range(2)]
        for ws in subscribers:
            await ws.close()
        return received

    with run_server(bench_app) as server:
        received = asyncio.run(scenario(server.port))
    assert received == ["round 0", "x" * 200] * 3


def test_bench_broadcast_subscribers_get_both_the_send_loop_and_asgiws_broadcast(run_server) -> None:
    async def scenario(port: int) -> list[str | bytes]:
        base = f"ws://127.0.0.1:{port}"
        subscribers = [await connect(f"{base}/broadcast") for _ in range(3)]
        async with connect(f"{base}/publish") as loop_publisher, \
                connect(f"{base}/broadcast_publish") as broadcast_publisher:
            await asyncio.sleep(0.2)  # subscribers register after accept
            await loop_publisher.send("by the send loop")
            received = [await asyncio.wait_for(ws.recv(), 5) for ws in subscribers]
            await broadcast_publisher.send("by asgiws.broadcast")
            received += [await asyncio.wait_for(ws.recv(), 5) for ws in subscribers]
        for ws in subscribers:
            await ws.close()
        return received

    with run_server(bench_app) as server:
        received = asyncio.run(scenario(server.port))
    assert received == ["by the send loop"] * 3 + ["by asgiws.broadcast"] * 3


def test_soak_short_run_loses_nothing_and_leaves_nothing_behind() -> None:
    # 20 clients, 2-second rounds: the soak's own checks (lost, reordered,
    # leftover tasks/fds/WebSockets) decide the exit status. The RSS bars are
    # loose here: so short a run is all start-up allocation.
    result = subprocess.run(
        [sys.executable, "-m", "soak.run", "--duration", "2", "--rounds", "2", "--clients", "20",
         "--drop-rate", "0.2", "--rss-tolerance", "0.5", "--rss-slope-tolerance", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 lost, 0 reordered" in result.stdout
    assert "round 2:" in result.stdout
