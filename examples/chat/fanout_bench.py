"""Fan-out to many local subscribers: asgiws.broadcast vs a plain ASGI send loop (asgiws, uvicorn).

    python -m examples.chat.fanout_bench --clients 5000 --messages 20 --rounds 5

Starts each server as a subprocess on 127.0.0.1, connects `--clients`
WebSockets (no compression offered) from this process, then per round POSTs
/publish?n=MESSAGES and times until every client has every frame. Reports
deliveries per second (clients x messages / time), median of the rounds, and
ratios against asgiws.broadcast. Servers compared:

- asgiws broadcast: the handler subscribes; the server writes the frame, built once.
- asgiws loop / uvicorn loop: the usual "connection manager": the publishing
  handler awaits websocket.send for each connected client, one ASGI message each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAYLOAD = "x" * 64  # one chat-sized text message
FRAME_SIZE = 2 + len(PAYLOAD)

# -- the server side: two apps -----------------------------------------------------------

_sends: set[Any] = set()


async def _http_publish(scope: dict[str, Any], receive: Any, send: Any, publish: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    count = int(dict(p.split("=") for p in scope["query_string"].decode().split("&") if p).get("n", "1"))
    for _ in range(count):
        await publish(PAYLOAD)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def broadcast_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from asgiws.broadcast import Broadcast

    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await Broadcast.from_scope(scope).subscribe(scope, "bench")
        while (await receive())["type"] != "websocket.disconnect":
            pass
    elif scope["type"] == "http":
        broadcast = Broadcast.from_scope(scope)
        await _http_publish(scope, receive, send, lambda text: broadcast.publish("bench", text))


async def loop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        _sends.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            _sends.discard(send)
    elif scope["type"] == "http":
        async def publish(text: str) -> None:
            message = {"type": "websocket.send", "text": text}
            for client_send in list(_sends):
                try:
                    await client_send(message)
                except OSError:
                    _sends.discard(client_send)

        await _http_publish(scope, receive, send, publish)


# -- the client side ---------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """A minimal WebSocket client: handshake, then counts received bytes (fixed-size frames)."""

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready
        self.head = b""
        self.received = 0
        self.target = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        transport.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                head, _, rest = self.head.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                self.ready.set_result(None)
                self.received += len(rest)
            return
        self.received += len(data)
        if self.done is not None and self.received >= self.target and not self.done.done():
            self.done.set_result(None)

    def expect(self, extra_bytes: int) -> asyncio.Future[None]:
        self.target = self.received + extra_bytes
        self.done = asyncio.get_running_loop().create_future()
        if self.received >= self.target:
            self.done.set_result(None)
        return self.done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_clients(port: int, clients: int, messages: int, rounds: int, pid: int) -> list[tuple[float, float]]:
    """(wall seconds, server CPU seconds) per round."""
    loop = asyncio.get_running_loop()
    subscribers = []
    for start in range(0, clients, 500):  # in batches, under the listen backlog
        batch = []
        for _ in range(min(500, clients - start)):
            ready = loop.create_future()
            _, protocol = await loop.create_connection(lambda r=ready: Subscriber(r), "127.0.0.1", port)
            subscribers.append(protocol)
            batch.append(ready)
        await asyncio.wait_for(asyncio.gather(*batch), 60)
    await asyncio.sleep(0.5)  # the last handlers subscribe after their accept
    times = []
    for _ in range(rounds):
        waits = [s.expect(messages * FRAME_SIZE) for s in subscribers]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        writer.write(b"POST /publish?n=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % messages)
        await asyncio.wait_for(asyncio.gather(*waits), 120)
        wall = time.perf_counter() - started
        await reader.readuntil(b"ok")
        times.append((wall, cpu_seconds(pid) - cpu))
        writer.close()
        await asyncio.sleep(0.2)
    return times


SERVERS = {
    "asgiws broadcast": ["-m", "asgiws", "examples.chat.fanout_bench:broadcast_app"],
    "asgiws loop": ["-m", "asgiws", "examples.chat.fanout_bench:loop_app"],
    "uvicorn loop": ["-m", "uvicorn", "examples.chat.fanout_bench:loop_app", "--loop", "uvloop",
                     "--http", "httptools", "--ws-per-message-deflate", "false", "--no-access-log"],
}
ASGIWS_FLAGS = ["--no-access-log", "--no-ws-per-message-deflate", "--log-level", "warning", "--lifespan", "off",
                "--limit-concurrency", "100000", "--backlog", "4096"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(name: str, args: argparse.Namespace) -> tuple[float, float]:
    """(deliveries per wall second, deliveries per server CPU second), medians of the rounds."""
    port = free_port()
    command = [sys.executable, *SERVERS[name], "--host", "127.0.0.1", "--port", str(port)]
    if name.startswith("asgiws"):
        command += ASGIWS_FLAGS + ["--workers", "1"]
    else:
        command += ["--log-level", "warning", "--lifespan", "off", "--backlog", "4096"]
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rounds = asyncio.run(run_clients(port, args.clients, args.messages, args.rounds, server.pid))
    finally:
        server.terminate()
        server.wait(30)
    deliveries = args.clients * args.messages
    wall = statistics.median(w for w, _ in rounds)
    cpu = max(statistics.median(c for _, c in rounds), 0.01)  # /proc has 10 ms ticks
    print(f"{name:18} wall {wall * 1000:7.1f} ms {deliveries / wall:10,.0f}/s   "
          f"server CPU {cpu * 1000:7.1f} ms {deliveries / cpu:10,.0f}/CPU-s", flush=True)
    return deliveries / wall, deliveries / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=20, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=sorted(SERVERS), action="append")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    rates = {name: measure(name, args) for name in (args.only or SERVERS)}
    base = rates.get("asgiws broadcast")
    if base:
        for name, (wall_rate, cpu_rate) in rates.items():
            print(f"asgiws broadcast vs {name}: {base[0] / wall_rate:.2f}x wall, "
                  f"{base[1] / cpu_rate:.2f}x server CPU")


if __name__ == "__main__":
    main()
