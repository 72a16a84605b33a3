"""The Redis broker: two workers behind one port, and Redis stopped and restarted."""

from __future__ import annotations

import asyncio
import logging
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

# Workers no longer hold a pattern subscription (they SUBSCRIBE per watched
# channel); the name stays for the tests that wait for workers with it.
wait_for_pattern_subscribers = wait_for_workers


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


def test_workers_without_broadcast_url_warn_when_the_app_first_publishes() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "tests.broadcast.apps:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--lifespan", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port)
        time.sleep(0.5)  # both workers up and quiet: nothing to warn about yet
        for _ in range(3):
            assert httpx.post(f"http://127.0.0.1:{port}/publish/lobby", content="hi", timeout=10).status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    warning = "No --broadcast-url: asgiws.broadcast messages only reach the clients of the worker"
    # Once per worker that published (the three requests may land on one or both), after start-up.
    assert 1 <= output.count(warning) <= 2, output
    assert output.index(warning) > output.index("running on")


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


def test_publish_after_a_redis_restart_retries_each_dead_pooled_connection_once(
        run_server, redis_server: RedisServer) -> None:
    # Before: every pooled connection was dead after the restart and its first
    # publish failed (2 of 10 in a row). Now each is retried once on a fresh one.
    from tests.broadcast.apps import app

    with run_server(app, broadcast_url=redis_server.url) as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                async def burst(tag: str) -> list[int]:
                    replies = await asyncio.gather(*(http.post(server.url("/publish/pool"), content=f"{tag}{i}")
                                                     for i in range(10)))
                    return [r.status_code for r in replies]

                assert await burst("warm") == [200] * 10  # several connections in the pool now
                redis_server.stop()
                redis_server.start()
                assert await burst("after") == [200] * 10
                r = await http.get(server.url("/history/pool?limit=100"))
                assert sorted(data for _, data in r.json()) == sorted(f"after{i}" for i in range(10))

        asyncio.run(main())


def test_workers_subscribe_only_to_the_channels_their_clients_watch(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "tests.broadcast.apps:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--broadcast-url", redis_server.url, "--lifespan", "off",
         "--no-access-log"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port)
        wait_for_workers(redis_server.url, 2)

        def channels() -> dict[bytes, int]:
            names = client.pubsub_channels("asgiws:*")
            return {name: count for name, count in client.pubsub_numsub(*names)} if names else {}

        def until(expected: dict[bytes, int]) -> None:
            deadline = time.monotonic() + 10
            while channels() != expected:
                assert time.monotonic() < deadline, channels()
                time.sleep(0.05)

        assert client.pubsub_numpat() == 0  # no PSUBSCRIBE asgiws:* any more
        until({})

        async def main() -> None:
            clients = [await join(f"ws://127.0.0.1:{port}/ws/watched?pid=1") for _ in range(12)]
            workers = {pid for _, pid in clients}
            until({b"asgiws:watched": len(workers)})  # one SUBSCRIBE per worker, not per client
            other = await join(f"ws://127.0.0.1:{port}/ws/other?pid=1")
            until({b"asgiws:watched": len(workers), b"asgiws:other": 1})
            await other[0].close()
            until({b"asgiws:watched": len(workers)})  # the last local subscriber left: UNSUBSCRIBE
            for ws, _ in clients:
                await ws.close()
            until({})

        asyncio.run(main())
    finally:
        client.close()
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)


def test_publish_script_retry_finds_the_first_attempt_instead_of_publishing_twice(
        redis_server: RedisServer) -> None:
    from asgiws.broadcast.redis_broker import PUBLISH_SCRIPT, redis_keys

    client = redis.Redis.from_url(redis_server.url)
    try:
        publish = client.register_script(PUBLISH_SCRIPT)
        now = int(time.time() * 1000)
        args = ["asgiws:r", b"thello", "e0e0e0e0", 100, 0, 60_000]
        first = publish(keys=redis_keys("r"), args=[*args, "pid-1", 0, now])
        # As after a connection lost mid-call:
        again = publish(keys=redis_keys("r"), args=[*args, "pid-1", 1, now])
        assert again == first
        other = publish(keys=redis_keys("r"), args=[*args, "pid-2", 1, now])
        assert other != first and other.endswith(b"-2")
        assert client.xlen(redis_keys("r")[1]) == 2
    finally:
        client.close()


def test_python_m_asgiws_broadcast_publish_prints_the_offset(redis_server: RedisServer) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "asgiws.broadcast", "publish", *args],
                              cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)

    first = run(redis_server.url, "cron", "nightly job done")
    assert first.returncode == 0 and first.stderr == ""
    lines = first.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith("-1") and lines[0].count(":") == 1
    second = run(redis_server.url, "cron", "again")
    assert second.stdout.splitlines()[0].endswith("-2")
    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = client.xrange("asgiws:{cron}:history")
        assert [fields[b"d"] for _, fields in entries] == [b"tnightly job done", b"tagain"]
        # Both keys expire: the stream a little over the history ttl (300 s) after the
        # last publish, the meta hash a little over 30 days after it.
        assert 300_000 <= client.pttl("asgiws:{cron}:history") <= 330_000 + 1000
        assert 30 * 86400_000 - 60_000 <= client.pttl("asgiws:{cron}:meta") <= 33 * 86400_000
    finally:
        client.close()
    down = run(f"redis://127.0.0.1:{free_port()}/0", "cron", "x")
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.startswith("error: could not publish to 'cron' through Redis at redis://127.0.0.1:")
    bad = run("http://example.com", "cron", "x")
    assert bad.returncode == 1 and bad.stderr == "error: 'http://example.com' is not a Redis URL (redis://HOST:PORT/DB)\n"


class _Collector:
    """A subscriber connection in-process: what the hub hands it, as frames' payloads."""

    def __init__(self) -> None:
        self.on_connection_lost = None
        self.received: list[str] = []
        self.arrived = asyncio.Event()

    def deliver_prepared(self, messages: list) -> bool:
        self.received += [message.payload.decode() for message in messages]
        self.arrived.set()
        return True


def test_a_resume_that_fails_is_logged_and_retried_so_the_channel_never_waits_for_ever(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    # While a gap is read from history, live messages wait behind it: a resume that died on an
    # unexpected error would leave the worker's subscribers of the channel without any message again.
    from asgiws.broadcast.offsets import parse_offset
    from asgiws.broadcast.redis_broker import RedisBroker

    async def main() -> None:
        broker = RedisBroker(redis_server.url, history_size=100, history_ttl=60.0)
        await broker.start()
        try:
            await asyncio.wait_for(broker.connected.wait(), 10)
            subscriber = _Collector()
            await broker.subscribe(subscriber, "room")
            first = await broker.publish("room", "1")
            await broker.publish("room", "2")
            while subscriber.received != ["1", "2"]:
                subscriber.arrived.clear()
                await asyncio.wait_for(subscriber.arrived.wait(), 10)
            deliver, failures = broker.hub.deliver, []

            def fails_once(*args: object, **kwargs: object) -> int:
                if not failures:
                    failures.append(args)
                    raise RuntimeError("injected delivery failure")
                return deliver(*args, **kwargs)

            broker.hub.deliver = fails_once  # type: ignore[method-assign]
            state = broker._channels["room"]
            state.offset = parse_offset(first)  # as if "2" had not come: the resume reads it from history
            broker._start_resume("room", state)  # and its delivery fails (the offset has moved on to "2")
            await broker.publish("room", "3")  # live, while resuming: waits behind the resume
            deadline = asyncio.get_running_loop().time() + 10
            while subscriber.received[-1:] != ["3"]:
                subscriber.arrived.clear()
                await asyncio.wait_for(subscriber.arrived.wait(), deadline - asyncio.get_running_loop().time())
            assert failures and subscriber.received == ["1", "2", "3"]
        finally:
            await broker.stop()

    with caplog.at_level(logging.ERROR, logger="asgiws.error"):
        asyncio.run(main())
    assert "Broadcast: resuming 'room' failed; retrying" in caplog.text
