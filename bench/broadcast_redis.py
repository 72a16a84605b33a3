"""Broadcast through Redis: publish-to-delivery latency and fan-out, with history and without.

    python -m bench.broadcast_redis [--quick] [--baseline-tree DIR] [--rounds N]

Starts a redis-server (no persistence) and, per variant and round, a fresh
one-worker asgiws server on it; the clients and the publisher are raw asyncio
WebSocket clients in this process (one read parses every frame it holds).

- latency: 200 subscribers; one 64-byte message every 5 ms through a publisher
  WebSocket; the time from the publisher's send to each subscriber's read, over
  every delivery (p50, p99).
- fan-out: 1,000 subscribers; a burst of 200 messages sent at once on the
  publisher WebSocket (the app publishes them one after the other); the time
  until every subscriber has all of them, as deliveries per second.

Variants: `history` (this tree, --broadcast-history-size 100, the default),
`no history` (this tree, --broadcast-history-size 0: the script without the
stream), and, with --baseline-tree DIR, `pub/sub` (the asgiws of another
checkout, e.g. one before history: PUBLISH and PSUBSCRIBE *). Rounds rotate
the variants' order; medians are reported with the ratio to the first
variant. Needs redis-server and `pip install 'asgiws[redis]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.ports import free_port, wait_for_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The server's app, written to a temporary directory so that any asgiws
# checkout can serve it (only the API both generations share).
APP = '''
from asgiws.broadcast import Broadcast


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    hub = Broadcast.from_scope(scope)
    role, channel = scope["path"].strip("/").split("/")
    if role == "sub":
        await hub.subscribe(scope, channel)
        await send({"type": "websocket.send", "text": "ready"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if role == "pub":
            await hub.publish(channel, message["text"])
'''


class Client(asyncio.Protocol):
    """A WebSocket client that reads unmasked server text frames and notes when each arrived."""

    def __init__(self, on_message: object = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()
        self.received = 0
        self.on_message = on_message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.handshaken.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert buffer.startswith(b"HTTP/1.1 101"), bytes(buffer[:80])
            del buffer[:end + 4]
            self.handshaken.set_result(None)
        now = time.perf_counter()
        position = 0
        while len(buffer) - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if len(buffer) - position < 4:
                    break
                length = int.from_bytes(buffer[start:start + 2], "big")
                start += 2
            elif length == 127:
                if len(buffer) - position < 10:
                    break
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            if len(buffer) < start + length:
                break
            payload = bytes(buffer[start:start + length])
            position = start + length
            if not self.ready.done():
                self.ready.set_result(None)
                continue
            self.received += 1
            if self.on_message is not None:
                self.on_message(payload, now)  # type: ignore[operator]
        del buffer[:position]

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


async def open_client(port: int, path: str, on_message: object = None) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(on_message), "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    assert client.transport is not None
    client.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await asyncio.wait_for(client.handshaken, 30)
    return client


async def open_subscribers(port: int, count: int, channel: str, on_message: object) -> list[Client]:
    clients: list[Client] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(*(open_client(port, f"/sub/{channel}", on_message)
                                       for _ in range(min(100, count - start))))
        clients.extend(batch)
    await asyncio.wait_for(asyncio.gather(*(client.ready for client in clients)), 60)
    return clients


async def latency(port: int, subscribers: int, messages: int, interval: float) -> dict[str, float]:
    sent: dict[bytes, float] = {}
    delays: list[float] = []

    def on_message(payload: bytes, now: float) -> None:
        delays.append(now - sent[payload[:8]])

    clients = await open_subscribers(port, subscribers, "lat", on_message)
    publisher = await open_client(port, "/pub/lat")
    await asyncio.sleep(0.5)
    for i in range(messages):
        key = f"{i:08d}".encode()
        sent[key] = time.perf_counter()
        publisher.send_text(key.decode() + "x" * 56)
        await asyncio.sleep(interval)
    deadline = time.monotonic() + 30
    while len(delays) < subscribers * messages and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for client in clients + [publisher]:
        assert client.transport is not None
        client.transport.close()
    assert len(delays) == subscribers * messages, f"{len(delays)} of {subscribers * messages} delivered"
    delays.sort()
    return {"p50_ms": delays[len(delays) // 2] * 1000, "p99_ms": delays[int(len(delays) * 0.99)] * 1000}


async def fanout(port: int, subscribers: int, burst: int) -> dict[str, float]:
    clients = await open_subscribers(port, subscribers, "fan", None)
    publisher = await open_client(port, "/pub/fan")
    await asyncio.sleep(0.5)
    began = time.perf_counter()
    for i in range(burst):
        publisher.send_text(f"{i:08d}" + "x" * 56)
    deadline = time.monotonic() + 60
    while any(client.received < burst for client in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    took = time.perf_counter() - began
    delivered = sum(client.received for client in clients)
    for client in clients + [publisher]:
        assert client.transport is not None
        client.transport.close()
    assert delivered == subscribers * burst, f"{delivered} of {subscribers * burst} delivered"
    return {"deliveries_per_s": delivered / took, "burst_ms": took * 1000}


def run_variant(tree: str, options: list[str], redis_url: str, app_dir: str, scenario: str,
                quick: bool) -> dict[str, float]:
    port = free_port()
    environment = dict(os.environ, PYTHONPATH=app_dir)
    server = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "broadcast_bench_app:app", "--host", "127.0.0.1",
         "--port", str(port),
         "--broadcast-url", redis_url, "--lifespan", "off", "--log-level", "warning", "--no-access-log",
         "--ws-ping-interval", "0", *options],
        cwd=tree, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        time.sleep(0.5)  # its Redis connection
        if scenario == "latency":
            messages = 200 if quick else 1000
            return asyncio.run(latency(port, 200, messages, 0.005))
        return asyncio.run(fanout(port, 1000, 200))
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 200 latency messages")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (full: 3, quick: 1)")
    parser.add_argument("--baseline-tree", help="another asgiws checkout to measure beside this one")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    variants: list[tuple[str, str, list[str]]] = []
    if args.baseline_tree:
        variants.append(("pub/sub (baseline tree)", os.path.abspath(args.baseline_tree), []))
    variants.append(("history (size 100)", ROOT, []))
    variants.append(("no history (size 0)", ROOT, ["--broadcast-history-size", "0"]))
    rounds = args.rounds or (1 if args.quick else 3)
    redis_port = free_port()
    redis = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--loglevel", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        wait_for_port(redis_port)
        with tempfile.TemporaryDirectory() as app_dir:
            with open(os.path.join(app_dir, "broadcast_bench_app.py"), "w") as file:
                file.write(APP)
            for scenario in ("latency", "fanout"):
                for round_number in range(rounds):
                    shift = round_number % len(variants)
                    for name, tree, options in variants[shift:] + variants[:shift]:
                        result = run_variant(tree, options, f"redis://127.0.0.1:{redis_port}/0", app_dir,
                                             scenario, args.quick)
                        results.setdefault((scenario, name), []).append(result)
                        print(f"{scenario:8} {name:26} {result}", file=sys.stderr)
    finally:
        redis.kill()
        redis.wait(10)
    load = os.getloadavg()
    print(f"\n{rounds} round(s); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"{os.cpu_count()} cores shared with the clients (and with whatever else runs)\n")
    print("| variant | latency p50 | latency p99 | fan-out deliveries/s | vs first row |")
    print("|---|---|---|---|---|")
    first: float | None = None
    for name, _, _ in variants:
        p50 = statistics.median(r["p50_ms"] for r in results[("latency", name)])
        p99 = statistics.median(r["p99_ms"] for r in results[("latency", name)])
        rate = statistics.median(r["deliveries_per_s"] for r in results[("fanout", name)])
        first = first or rate
        print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms | {rate:,.0f} | {rate / first:.2f}x |")


if __name__ == "__main__":
    main()
