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
            await publisher.send(b"\x00\x01")  # bytes too
            received = [await asyncio.wait_for(ws.recv(), 5) for ws in subscribers for _ in range(3)]
        for ws in subscribers:
            await ws.close()
        return received

    with run_server(bench_app) as server:
        received = asyncio.run(scenario(server.port))
    assert received == ["round 0", "x" * 200, b"\x00\x01"] * 3


def test_bench_tls_memory_measures_openssls_state_with_and_without_its_bios(tmp_path) -> None:
    import trustme

    from bench.tls_memory import measure

    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    result = measure(100, str(cert_path), str(key_path))
    # Each idle SSLObject holds its SSL object and two memory BIOs that grew in the handshake.
    assert 4 < result["kib_per_conn_without_bios"] < result["kib_per_conn"] < 64, result
    assert result["session_cache_entries"] == 0  # TLS 1.3 tickets: nothing kept per connection by the context


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
